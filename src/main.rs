fn main() -> std::process::ExitCode {
    autopatch::cli::main()
}
