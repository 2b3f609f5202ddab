# Just enough of nixpkgs to evaluate default.nix, flake.nix and hooks/nix/*.nix where nixpkgs
# cannot be fetched: the functions they call, with nixpkgs' names and argument shapes, whose
# "packages" are records of what they were given.
{
  system ? builtins.currentSystem,
  overlays ? [ ],
}:
let
  lib = rec {
    fix = f: let x = f x; in x;
    importTOML = path: builtins.fromTOML (builtins.readFile path);
    cleanSourceWith =
      {
        src,
        filter ? _: _: true,
        name ? "source",
      }:
      {
        inherit name;
        # Nested filters compose, as in nixpkgs.
        filter = path: type: filter path type && (src.filter or (_: _: true)) path type;
        origSrc = src.origSrc or src;
      };
    cleanSource = src: cleanSourceWith { inherit src; };
    genAttrs =
      names: f:
      builtins.listToAttrs (
        map (name: {
          inherit name;
          value = f name;
        }) names
      );
    callPackageWith =
      auto: fn: args:
      let
        f = if builtins.isFunction fn then fn else import fn;
      in
      f (builtins.intersectAttrs (builtins.functionArgs f) auto // args);
    platforms.linux = [
      "x86_64-linux"
      "aarch64-linux"
    ];
  };

  base = applied: final: {
    inherit lib system;
    callPackage = lib.callPackageWith final;
    rustPlatform.buildRustPackage =
      args:
      assert builtins.isString args.pname && builtins.isString args.version;
      {
        kind = "rust-package";
        name = "${args.pname}-${args.version}";
        inherit args;
      };
    makeSetupHook = args: script: {
      kind = "setup-hook";
      inherit (args) name;
      inherit args script;
    };
    extend = overlay: make (applied ++ [ overlay ]);
  };

  make =
    applied:
    lib.fix (final: builtins.foldl' (prev: overlay: prev // overlay final prev) (base applied final) applied);
in
make overlays
