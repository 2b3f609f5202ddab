# Prebuilt binaries packaged with the setup hook in a real Nix build, without nixpkgs: plain
# derivations whose builder is a store bash, with testdata/hooks/nix/stdenv.sh standing in for
# stdenv. The store paths come from the NixOS-like root (testdata/nixroot) and
# testdata/hooks/nix/store-tools.sh; prebuilt is a directory made by prebuilt.sh.
{
  tools, # store path with bin/bash and bin/find
  coreutils, # store path of a coreutils bin directory
  glibcLib, # the store glibc's lib directory
  autopatch, # the autopatch binary
  prebuilt,
  hook ? ../../../hooks/nix/setup-hook.sh,
}:
let
  system = "x86_64-linux";
  bash = "${builtins.storePath tools}/bin/bash";
  PATH = "${builtins.storePath coreutils}:${builtins.storePath tools}/bin";

  # What a bintools wrapper gives a build: nix-support/dynamic-linker.
  bintools = derivation {
    name = "bintools-stub";
    inherit system PATH;
    builder = bash;
    args = [
      "-c"
      "mkdir -p $out/nix-support && echo ${builtins.storePath glibcLib}/ld-linux-x86-64.so.2 >$out/nix-support/dynamic-linker"
    ];
  };

  # A library package: lib/lib<name>.so from the prebuilt files.
  library =
    name:
    derivation {
      name = "${name}-1.0";
      inherit system PATH;
      builder = bash;
      args = [
        "-c"
        "mkdir -p $out/lib && cat ${prebuilt}/${name}/lib/lib${name}.so >$out/lib/lib${name}.so"
      ];
    };
in
derivation {
  name = "hello-prebuilt-1.0";
  inherit system PATH hook prebuilt;
  builder = bash;
  args = [ ./builder.sh ];
  harness = ./.;
  outputs = [ "out" ];
  buildInputs = [ (library "greet") ];
  runtimeDependencies = [ (library "extra") ];
  NIX_BINTOOLS = bintools;
  AUTOPATCH = autopatch;
}
