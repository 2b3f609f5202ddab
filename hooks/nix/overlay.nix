# Adds autopatch and autopatchHook to nixpkgs.
final: prev: {
  autopatch = final.callPackage ./package.nix { };
  autopatchHook = final.callPackage ./hook.nix { };
}
