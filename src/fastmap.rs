//! Hash maps for the hot paths, with a fast hash (seeded per process): a run hashes hundreds of
//! thousands of paths and names. Paths are best keyed by their bytes (`OsString`): hashing and
//! comparing a `Path` goes component by component.

pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub type FastSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;
