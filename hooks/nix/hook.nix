# The setup hook: `nativeBuildInputs = [ autopatchHook ];` patches every output's ELF files
# after fixup, as autoPatchelfHook does.
{ makeSetupHook, autopatch }:
makeSetupHook {
  name = "autopatch-hook";
  # Puts autopatch on PATH wherever the hook is a native build input.
  propagatedBuildInputs = [ autopatch ];
  meta.description = "Setup hook patching prebuilt ELF files with autopatch, a drop-in for autoPatchelfHook";
} ./setup-hook.sh
