# autopatch without flakes:
#   nix-build -A autopatch            the program
#   nix-build -A autopatchHook        the setup hook (nativeBuildInputs = [ autopatchHook ])
#   (import ./default.nix { }).overlay  for nixpkgs' overlays
{
  pkgs ? import <nixpkgs> { },
}:
let
  overlay = import ./hooks/nix/overlay.nix;
  extended = pkgs.extend overlay;
in
{
  inherit (extended) autopatch autopatchHook;
  inherit overlay;
}
