# The autopatch program.
{ lib, rustPlatform }:
let
  manifest = lib.importTOML ../../Cargo.toml;
in
rustPlatform.buildRustPackage {
  pname = manifest.package.name;
  inherit (manifest.package) version;

  src = lib.cleanSourceWith {
    name = "autopatch-source";
    src = lib.cleanSource ../..;
    # Build outputs and test inputs are no part of the build.
    filter = path: type: !(builtins.elem (baseNameOf path) [ "target" "testdata" ]);
  };
  cargoLock.lockFile = ../../Cargo.lock;

  # The test suite needs a writable Nix store, bubblewrap and a conda channel.
  doCheck = false;

  meta = {
    description = "Make conda and pip environments run on NixOS by rewriting ELF interpreters and run paths";
    mainProgram = "autopatch";
    platforms = lib.platforms.linux;
  };
}
