//! Placing new strings in the dynamic string table: reuse, overwrite in place, or append.

use std::cell::LazyCell;

use super::read::StrTab;

/// A string some field must point at, and the string offset that field points at now.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub old: Option<u64>,
    pub string: Vec<u8>,
}

/// Where each requested string ended up.
#[derive(Debug, Default)]
pub(crate) struct Placement {
    /// The string table offset for each request, in request order.
    pub offsets: Vec<u64>,
    /// The string table as it must be after the edit: `base` with overwrites, then appended strings.
    pub table: Vec<u8>,
    /// Whether strings were appended, so the table no longer fits where it is.
    pub appended: bool,
    /// Table offsets rewritten in place, with their new bytes (NUL-padded to the old length).
    pub overwrites: Vec<(u64, Vec<u8>)>,
}

/// Places `requests` in a table whose first `base_len` bytes are kept. `references` gives every
/// offset something in the file points at (`None`: not all are known), so a string is
/// overwritten only when every user of it wants the same new value. It is called only when a
/// new string fits in place of an old one: gathering symbol names reads the symbol table.
pub(crate) fn place(
    strtab: &StrTab,
    base_len: usize,
    requests: &[Request],
    references: impl FnOnce() -> Option<Vec<u64>>,
) -> Placement {
    let references = LazyCell::new(references);
    let base = &strtab.bytes[..base_len.min(strtab.bytes.len())];
    let mut table = base.to_vec();
    let mut offsets = vec![None; requests.len()];
    let mut overwrites = Vec::new();
    for (i, req) in requests.iter().enumerate() {
        let Some(old) = req.old else { continue };
        if overwrites.iter().any(|(at, _): &(u64, Vec<u8>)| *at == old) {
            offsets[i] = Some(old);
        } else if can_overwrite(base, old, &req.string, i, requests, || {
            references.as_deref()
        }) {
            let old_len = string_len(base, old);
            let mut bytes = req.string.clone();
            bytes.resize(old_len, 0);
            table[old as usize..old as usize + old_len].copy_from_slice(&bytes);
            overwrites.push((old, bytes));
            offsets[i] = Some(old);
        }
    }
    let mut appended = false;
    for (i, req) in requests.iter().enumerate() {
        if offsets[i].is_some() {
            continue;
        }
        let at = find_string(&table, &req.string).unwrap_or_else(|| {
            appended = true;
            // A last string that runs to the end of the table would run on into the first
            // appended one: a NUL keeps it as the table delimits it.
            if table.last().is_some_and(|&b| b != 0) {
                table.push(0);
            }
            let at = table.len();
            table.extend_from_slice(&req.string);
            table.push(0);
            at
        });
        offsets[i] = Some(at as u64);
    }
    Placement {
        offsets: offsets.into_iter().map(|o| o.unwrap_or(0)).collect(),
        table,
        appended,
        overwrites,
    }
}

fn string_len(table: &[u8], at: u64) -> usize {
    table[at as usize..]
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(0)
}

/// An old string may be overwritten when the new one fits in its bytes, it is nobody's suffix
/// (the byte before it ends another string), no other reference points into it, and every
/// reference to it is a request for the same new string.
fn can_overwrite<'r>(
    base: &[u8],
    old: u64,
    new: &[u8],
    index: usize,
    requests: &[Request],
    references: impl FnOnce() -> Option<&'r [u64]>,
) -> bool {
    let at = old as usize;
    if at >= base.len() || !base[at..].contains(&0) {
        return false;
    }
    let old_len = string_len(base, old);
    let starts_string = at == 0 || base[at - 1] == 0;
    let same_users = requests
        .iter()
        .enumerate()
        .all(|(j, r)| j == index || r.old != Some(old) || r.string == requests[index].string);
    if new.len() > old_len || !starts_string || !same_users {
        return false;
    }
    let Some(references) = references() else {
        return false;
    };
    let wanted = requests.iter().filter(|r| r.old == Some(old)).count();
    let users = references.iter().filter(|&&r| r == old).count();
    let inner_users = references
        .iter()
        .any(|&r| r > old && r <= old + old_len as u64);
    users <= wanted && !inner_users
}

/// The runs `(start, len)` of the `len` bytes at `at` in `table` that no string at one of
/// `live` (its bytes and its NUL) covers.
pub(crate) fn unshared_runs(
    table: &[u8],
    at: u64,
    len: usize,
    live: &[u64],
) -> Vec<(usize, usize)> {
    let start = at as usize;
    let end = (start + len).min(table.len());
    if start >= end {
        return Vec::new();
    }
    // Only strings starting after the NUL before `start` can reach into the run.
    let reach_from = table[..start]
        .iter()
        .rposition(|&b| b == 0)
        .map_or(0, |nul| nul + 1);
    let mut free = vec![true; end - start];
    for &l in live {
        let Ok(l) = usize::try_from(l) else { continue };
        if l < reach_from || l >= end {
            continue;
        }
        let from = l.max(start);
        let to = table[from..end]
            .iter()
            .position(|&b| b == 0)
            .map_or(end, |nul| from + nul + 1);
        free[from - start..to - start].fill(false);
    }
    let mut runs = Vec::new();
    let mut at = start;
    for chunk in free.chunk_by(|a, b| a == b) {
        if chunk[0] {
            runs.push((at, chunk.len()));
        }
        at += chunk.len();
    }
    runs
}

/// The offset of `s` followed by NUL in `table`, shared as a suffix where possible.
fn find_string(table: &[u8], s: &[u8]) -> Option<usize> {
    let needle_len = s.len() + 1;
    if table.len() < needle_len {
        return None;
    }
    let mut from = 0;
    while let Some(nul) = table[from..].iter().position(|&b| b == 0) {
        let end = from + nul;
        if end >= s.len() && &table[end - s.len()..end] == s {
            return Some(end - s.len());
        }
        from = end + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(bytes: &'static [u8]) -> StrTab<'static> {
        StrTab {
            vaddr: 0,
            offset: 0,
            bytes,
        }
    }

    #[test]
    fn reuses_an_identical_string_or_a_suffix() {
        let t = table(b"\0libfoo.so\0/opt/lib\0");
        let req = [Request {
            old: None,
            string: b"foo.so".to_vec(),
        }];
        let p = place(&t, t.bytes.len(), &req, || Some(Vec::new()));
        assert_eq!(p.offsets, vec![4]);
        assert!(!p.appended);
    }

    /// "/opt/lib" (at 11) asked to become "/x", the file's references being `references`.
    fn shorten_opt_lib(references: Option<Vec<u64>>) -> Placement {
        let t = table(b"\0libfoo.so\0/opt/lib\0");
        let req = [Request {
            old: Some(11),
            string: b"/x".to_vec(),
        }];
        place(&t, t.bytes.len(), &req, || references)
    }

    #[test]
    fn overwrites_an_unshared_string_in_place() {
        let p = shorten_opt_lib(Some(vec![1, 11]));
        assert_eq!(p.offsets, vec![11]);
        assert_eq!(&p.table[11..20], b"/x\0\0\0\0\0\0\0");
    }

    #[test]
    fn appends_when_not_every_reference_is_known() {
        let p = shorten_opt_lib(None);
        assert!(p.appended);
        assert_eq!(&p.table[11..20], b"/opt/lib\0");
    }

    #[test]
    fn keeps_a_string_whose_tail_names_a_symbol() {
        // A symbol named "lib" shares the run path's last bytes.
        let p = shorten_opt_lib(Some(vec![1, 11, 16]));
        assert!(p.appended);
        assert_eq!(&p.table[11..20], b"/opt/lib\0");
    }

    #[test]
    fn unshared_runs_leave_every_live_string_whole() {
        let t = b"\0libfoo.so\0/opt/lib\0x\0";
        // Nothing else uses "/opt/lib".
        assert_eq!(unshared_runs(t, 11, 8, &[1]), vec![(11, 8)]);
        // A symbol named "lib" keeps its bytes and NUL; "/opt/" goes.
        assert_eq!(unshared_runs(t, 11, 8, &[1, 16]), vec![(11, 5)]);
        // A reference into the middle ("pt/lib") keeps everything from it on.
        assert_eq!(unshared_runs(t, 11, 8, &[13]), vec![(11, 2)]);
        assert!(unshared_runs(t, 11, 8, &[11]).is_empty());
    }

    #[test]
    fn appends_when_the_old_string_is_shared() {
        let t = table(b"\0libfoo.so\0/opt/lib\0");
        let req = [Request {
            old: Some(1),
            string: b"libbar.so".to_vec(),
        }];
        let p = place(&t, t.bytes.len(), &req, || Some(vec![1, 1]));
        assert!(p.appended);
        assert_eq!(p.offsets, vec![20]);
        assert_eq!(&p.table[20..], b"libbar.so\0");
    }

    #[test]
    fn an_unterminated_last_string_is_ended_before_appending() {
        let t = table(b"\0libfoo.so\0GREET_1.0");
        let req = [Request {
            old: None,
            string: b"$ORIGIN".to_vec(),
        }];
        let p = place(&t, t.bytes.len(), &req, || Some(vec![1, 11]));
        assert!(p.appended);
        assert_eq!(p.offsets, vec![21]);
        assert_eq!(&p.table[11..], b"GREET_1.0\0$ORIGIN\0");
    }
}
