//! File input and output shared by every writer and reader: atomic writes, size-bounded reads,
//! progress bars and the finiteness check of written weights (public), and the one safetensors
//! reader and writer and text tables (internal).

pub mod atomic;
pub mod bounded;
pub mod finite;
pub mod progress;
pub(crate) mod safetensors_file;
pub(crate) mod safetensors_write;
pub(crate) mod table;
