//! [`Tokenizer::from_gguf_metadata`] / [`Tokenizer::from_gguf_file`]: the tokenizer embedded in a
//! GGUF file, through [`gguf_tokenizer_json`] (which builds it as transformers does).

use crate::chat::ChatTemplate;
use crate::error::{AdapterError, Result};
use crate::gguf::tokenizer::gguf_tokenizer_json;
use crate::train::tokenizer::Tokenizer;
use candle_core::quantized::gguf_file::Value;
use std::collections::HashMap;
use std::path::Path;

impl Tokenizer {
    /// The tokenizer embedded in a GGUF file's metadata (as transformers builds it from the same file).
    ///
    /// `metadata` is candle's `gguf_file::Content::metadata`; `file` names the file in errors.
    /// BOS, EOS and PAD are the tokens of `tokenizer.ggml.{bos,eos,padding}_token_id`; where the
    /// file has none, [`Tokenizer::from_bytes`]' fallbacks apply (well-known names; PAD: EOS).
    /// Errors: [`AdapterError::Config`] for an unsupported `tokenizer.ggml.model`, a missing or
    /// mistyped key, or inconsistent metadata (naming the key, expected vs actual).
    pub fn from_gguf_metadata(metadata: &HashMap<String, Value>, file: &Path) -> Result<Tokenizer> {
        let built = gguf_tokenizer_json(metadata, file)?;
        let bytes =
            serde_json::to_vec(&built.tokenizer_json).map_err(|e| AdapterError::Tokenizer {
                source_name: file.display().to_string(),
                reason: format!("serializing the tokenizer built from GGUF metadata: {e}"),
            })?;
        let name = file.display().to_string();
        let tok = Tokenizer::from_bytes(&bytes, &name, Some(&built.config))?;
        // `tokenizer.chat_template`, with the special tokens the metadata names.
        let template = ChatTemplate::from_tokenizer_config(&built.config, &name);
        Ok(tok.with_chat_template_result(template))
    }

    /// The tokenizer of a GGUF file: reads its header and metadata (not its tensors) with candle,
    /// then [`Tokenizer::from_gguf_metadata`].
    pub fn from_gguf_file(path: impl AsRef<Path>) -> Result<Tokenizer> {
        let path = path.as_ref();
        let file = crate::gguf::GgufFile::open(path)?;
        Self::from_gguf_metadata(file.metadata(), path)
    }
}
