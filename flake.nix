{
  description = "autopatch: make conda and pip environments run on NixOS";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems =
        f: nixpkgs.lib.genAttrs systems (system: f (nixpkgs.legacyPackages.${system}.extend self.overlays.default));
    in
    {
      overlays.default = import ./hooks/nix/overlay.nix;

      packages = forAllSystems (pkgs: {
        inherit (pkgs) autopatch autopatchHook;
        default = pkgs.autopatch;
      });
    };
}
