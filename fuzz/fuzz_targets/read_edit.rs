//! Parses arbitrary bytes as ELF; when they parse, plans several edits (in place and growing),
//! applies each in memory, and checks the output parses and reads back what was set. A grown
//! output is edited again, which rebuilds the growth region instead of adding another.

#![no_main]

use autopatch::elf::{Edits, Elf, RunPathEdit, plan};
use libfuzzer_sys::fuzz_target;

fn long(prefix: &str, len: usize) -> Vec<u8> {
    let mut v = prefix.as_bytes().to_vec();
    v.resize(len, b'x');
    v
}

/// The edits tried on every input: growing, in place, and the needed list and soname.
fn edit_sets(elf: &Elf) -> Vec<Edits> {
    let first_needed = elf.needed().first().map(|n| n.to_vec());
    vec![
        Edits {
            interpreter: Some(long("/nix/store/interp-", 300)),
            run_path: Some(RunPathEdit::Set(long("/nix/store/rpath-", 700))),
            ..Edits::default()
        },
        Edits {
            interpreter: Some(b"/l".to_vec()),
            run_path: Some(RunPathEdit::Set(b"$ORIGIN".to_vec())),
            ..Edits::default()
        },
        Edits {
            add_needed: vec![b"libadded.so.1".to_vec()],
            replace_needed: first_needed
                .clone()
                .map(|n| (n, b"libreplaced.so.2".to_vec()))
                .into_iter()
                .collect(),
            soname: Some(long("libsoname-", 120)),
            ..Edits::default()
        },
        Edits {
            run_path: Some(RunPathEdit::Remove),
            remove_needed: first_needed.into_iter().collect(),
            ..Edits::default()
        },
    ]
}

/// Checks that `out` parses and holds what `edits` set.
fn check(out: &[u8], edits: &Edits) {
    let elf = Elf::parse(out).expect("the edited file parses");
    if let Some(interp) = &edits.interpreter {
        assert_eq!(elf.interpreter(), Some(interp.as_slice()));
    }
    match &edits.run_path {
        Some(RunPathEdit::Set(p)) => {
            assert_eq!(elf.run_path().map(|(_, p)| p), Some(p.as_slice()));
        }
        Some(RunPathEdit::Remove) => assert_eq!(elf.run_path(), None),
        None => {}
    }
    let needed = elf.needed();
    for n in &edits.add_needed {
        assert!(needed.contains(&n.as_slice()), "added library missing");
    }
    for n in &edits.remove_needed {
        assert!(!needed.contains(&n.as_slice()), "removed library present");
    }
    for (old, new) in &edits.replace_needed {
        assert!(needed.contains(&new.as_slice()), "replacement missing");
        if old != new && !edits.add_needed.contains(old) {
            assert!(
                !needed.contains(&old.as_slice()),
                "replaced library present"
            );
        }
    }
    if let Some(s) = &edits.soname {
        assert_eq!(elf.soname(), Some(s.as_slice()));
    }
}

/// Plans and applies `edits`; `None` when the plan refuses or changes nothing.
fn edit(data: &[u8], edits: &Edits) -> Option<Vec<u8>> {
    let elf = Elf::parse(data).ok()?;
    let rewrite = plan(&elf, edits).ok()??;
    let out = rewrite.apply(data);
    check(&out, edits);
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    let Ok(elf) = Elf::parse(data) else {
        return;
    };
    let _ = (elf.version_needs(), elf.version_defs(), elf.max_page_size());
    for edits in edit_sets(&elf) {
        let Some(out) = edit(data, &edits) else {
            continue;
        };
        let again = Elf::parse(&out).expect("the edited file parses");
        for next in edit_sets(&again) {
            if let Some(twice) = edit(&out, &next) {
                edit(&twice, &edits);
            }
        }
    }
});
