//! File input and output shared by every writer and reader: atomic writes, the one safetensors
//! reader and writer, progress bars and text tables.

pub mod atomic;
pub mod progress;
pub mod safetensors_file;
pub mod safetensors_write;
pub mod table;
