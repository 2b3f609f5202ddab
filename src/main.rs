// A run allocates many small paths and strings across threads; mimalloc serves that pattern
// with far less contention and fragmentation than glibc's malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    autopatch::cli::main()
}
