//! The result of planning an edit: which bytes of the input to keep, move and overwrite.

/// Bytes to write at a file offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub offset: u64,
    pub bytes: Vec<u8>,
}

/// Input bytes `[from, from + len)` that land at `to` in the output: the unloaded data (section
/// table, symbol tables) that followed a growth region which is being rebuilt at a new size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TailMove {
    pub from: u64,
    pub len: u64,
    pub to: u64,
}

/// How to turn an input file into the edited one: keep `[0, keep)`, place the tail, then apply
/// `writes` in order. `writes` are ordered so that, applied in place to a file they only append
/// to, every intermediate state still loads: new data first, then the headers that point at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    pub keep: u64,
    pub tail: Option<TailMove>,
    pub writes: Vec<Write>,
    pub len: u64,
}

impl Rewrite {
    /// Whether the edit changes the file's size or layout (as opposed to overwriting bytes).
    pub fn grows(&self, input_len: u64) -> bool {
        self.len != input_len || self.keep != input_len || self.tail.is_some()
    }

    /// Whether the rewrite can be done on the file itself by appending and then overwriting,
    /// without rewriting anything the file already holds except header fields.
    pub fn is_append_only(&self, input_len: u64) -> bool {
        self.keep == input_len && self.tail.is_none() && self.len >= input_len
    }

    /// Bytes written, counting appended data and moved tail.
    pub fn bytes_written(&self) -> u64 {
        let writes: u64 = self.writes.iter().map(|w| w.bytes.len() as u64).sum();
        writes + self.tail.map_or(0, |t| t.len)
    }

    /// Bytes `[start, end)` of the output, computed without building the whole of it.
    pub fn window(&self, input: &[u8], start: u64, end: u64) -> Vec<u8> {
        let mut out = vec![0u8; (end - start) as usize];
        let keep = self.keep.min(input.len() as u64);
        let mut place = |dst: u64, src: &[u8]| {
            let (s, e) = (dst.max(start), (dst + src.len() as u64).min(end));
            if s < e {
                let from = (s - dst) as usize;
                out[(s - start) as usize..(e - start) as usize]
                    .copy_from_slice(&src[from..from + (e - s) as usize]);
            }
        };
        place(0, &input[..keep as usize]);
        if let Some(t) = self.tail {
            place(t.to, &input[t.from as usize..(t.from + t.len) as usize]);
        }
        for w in &self.writes {
            place(w.offset, &w.bytes);
        }
        out
    }

    /// Applies the rewrite to an in-memory copy of the input.
    pub fn apply(&self, input: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; self.len as usize];
        let keep = (self.keep as usize).min(input.len()).min(out.len());
        out[..keep].copy_from_slice(&input[..keep]);
        if let Some(t) = self.tail {
            let (from, len, to) = (t.from as usize, t.len as usize, t.to as usize);
            out[to..to + len].copy_from_slice(&input[from..from + len]);
        }
        for w in &self.writes {
            let at = w.offset as usize;
            out[at..at + w.bytes.len()].copy_from_slice(&w.bytes);
        }
        out
    }
}
