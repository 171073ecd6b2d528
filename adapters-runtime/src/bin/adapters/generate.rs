//! `adapters generate`: a model (HF folder or GGUF file), with a PEFT adapter or not, continues a
//! prompt or chats, the text streamed to stdout as it is produced; diagnostics go to stderr.

use adapters_runtime::estimate::BaseDType;
use adapters_runtime::generate::{
    eos_ids, generate, gguf_eos_ids, sampling_defaults, ChatSession, Generation, GenerationConfig,
    StopReason, TRANSFORMERS_TOP_K,
};
use adapters_runtime::gguf::{is_gguf_path, GgufFile};
use adapters_runtime::models::llama::{load_model, Llama};
use adapters_runtime::train::{encode_prompt, Tokenizer};
use adapters_runtime::{load_adapter, AdapterError, Adapters, LoadOptions, Result};
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

/// `adapters generate`'s arguments (transformers' names for the generation knobs).
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// The model: an HF folder (config.json + safetensors) or a llama.cpp .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// A PEFT adapter folder to apply (merged into the weights unless --unmerged).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// tokenizer.json (default: the model folder's; for a .gguf file, its metadata). The chat
    /// template comes from the tokenizer's folder (or the GGUF metadata).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// The text to continue; with --chat, the one user message to answer.
    #[arg(long, required_unless_present = "chat")]
    prompt: Option<String>,
    /// Chat with the model's chat template: answers --prompt, or else every line read from
    /// stdin as a new user message of one conversation (`/reset` starts over).
    #[arg(long)]
    chat: bool,
    /// A system message opening the conversation (with --chat).
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Tokens to generate at most (per answer).
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 decodes greedily. Default: the model's generation_config.json
    /// (greedy unless it sets do_sample).
    #[arg(long)]
    temperature: Option<f64>,
    /// Sample among the k most likely tokens (0: all; default 50 as transformers, or the
    /// model's generation_config.json).
    #[arg(long)]
    top_k: Option<usize>,
    /// Sample among the most likely tokens covering this probability (default 1: all).
    #[arg(long)]
    top_p: Option<f64>,
    /// Penalty for tokens already in the sequence (1: none).
    #[arg(long)]
    repetition_penalty: Option<f64>,
    /// Seed of the sampling (the same seed gives the same text).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop when this string is generated (repeatable); EOS always stops.
    #[arg(long = "stop", value_name = "TEXT")]
    stop: Vec<String>,
    /// Dtype of the model's dense weights and activations (f32, bf16, f16).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Keep the adapter unmerged (as trained) instead of merging it into the weights.
    #[arg(long, requires = "adapter")]
    unmerged: bool,
    /// A GGUF base computes its quantized products exactly (dequantized, as in training)
    /// instead of through GGML's quantized kernels (llama.cpp's numerics, much faster).
    #[arg(long)]
    exact: bool,
    /// No statistics on stderr.
    #[arg(long)]
    quiet: bool,
}

/// Runs the command; `Ok(())` also when stdout was closed by its reader.
pub fn run(args: GenerateArgs) -> Result<()> {
    let dtype = BaseDType::parse(&args.dtype).ok_or_else(|| AdapterError::InvalidArgument {
        name: "--dtype".into(),
        expected: "f32, bf16 or f16".into(),
        actual: args.dtype.clone(),
    })?;
    let device = adapters_runtime::device(&args.device)?;
    let gguf = is_gguf_path(&args.model);
    let model_dir = (!gguf).then_some(args.model.as_path());
    // A GGUF file's header is read once here, for its tokenizer and its end-of-generation ids.
    let gguf_file = gguf.then(|| GgufFile::open(&args.model)).transpose()?;
    let tok = tokenizer(&args, gguf_file.as_ref())?;
    let mut model = load_model(&args.model, dtype.to_candle(), &device, None)?.model;
    if let Some(dir) = &args.adapter {
        let options = LoadOptions {
            config_from_file: true,
            ..LoadOptions::default()
        };
        let report = load_adapter(&mut model, dir, &options)?;
        // A quantized (GGUF) base keeps its adapters unmerged: merging would dequantize it.
        let merge = !args.unmerged && !gguf;
        if merge {
            model.merge_adapters()?;
        }
        note(
            &args,
            &format!(
                "adapter: {} ({} layers, {})",
                dir.display(),
                report.loaded.len(),
                if merge { "merged" } else { "unmerged" }
            ),
        );
    }
    if gguf && !args.exact {
        model.set_ggml_kernels(true);
    }
    let mut config = generation_config(&args, model_dir, &tok)?;
    if let Some(file) = &gguf_file {
        for id in gguf_eos_ids(file.metadata(), &tok) {
            if !config.eos.contains(&id) {
                config.eos.push(id);
            }
        }
    }
    let mut out = Stdout::default();
    let result = if args.chat {
        chat(&args, &model, &tok, &config, &mut out)
    } else {
        let prompt = args.prompt.as_deref().unwrap_or_default();
        let ids = encode_prompt(&tok, prompt)?;
        let mut cache = model.new_cache();
        generate(&model, &tok, &ids, &config, &mut cache, &mut |t| {
            out.write(t)
        })
        .and_then(|g| out.end().map(|()| g))
        .map(|g| stats(&args, &g))
    };
    match result {
        Err(_) if out.closed => Ok(()),
        r => r,
    }
}

/// The tokenizer: `--tokenizer`, the GGUF metadata, or the model folder's `tokenizer.json`.
fn tokenizer(args: &GenerateArgs, gguf: Option<&GgufFile>) -> Result<Tokenizer> {
    if let Some(path) = &args.tokenizer {
        return Tokenizer::from_file(path);
    }
    if let Some(file) = gguf {
        return Tokenizer::from_gguf_metadata(file.metadata(), &args.model);
    }
    let path = args.model.join("tokenizer.json");
    if !path.is_file() {
        return Err(AdapterError::InvalidArgument {
            name: "--tokenizer".into(),
            expected: format!("a tokenizer.json (none in {})", args.model.display()),
            actual: "nothing".into(),
        });
    }
    Tokenizer::from_file(&path)
}

/// The generation settings: the flags over the model's `generation_config.json`.
fn generation_config(
    args: &GenerateArgs,
    model_dir: Option<&Path>,
    tok: &Tokenizer,
) -> Result<GenerationConfig> {
    let mut sampling = sampling_defaults(model_dir)?;
    if let Some(t) = args.temperature {
        // Sampling asked for where the model's defaults are greedy: transformers' top_k.
        if t > 0.0 && !sampling.samples() {
            sampling.top_k = TRANSFORMERS_TOP_K;
        }
        sampling.temperature = t;
    }
    if let Some(k) = args.top_k {
        sampling.top_k = k;
    }
    if let Some(p) = args.top_p {
        sampling.top_p = p;
    }
    if let Some(p) = args.repetition_penalty {
        sampling.repetition_penalty = p;
    }
    sampling.seed = args.seed;
    sampling.validate()?;
    Ok(GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        sampling,
        eos: eos_ids(model_dir, tok)?,
        stop_strings: args.stop.clone(),
    })
}

/// One answer to `--prompt`, or a conversation read from stdin.
fn chat(
    args: &GenerateArgs,
    model: &Llama,
    tok: &Tokenizer,
    config: &GenerationConfig,
    out: &mut Stdout,
) -> Result<()> {
    let mut session = ChatSession::new(model, args.system.clone());
    let answer = |session: &mut ChatSession, text: &str, out: &mut Stdout| -> Result<()> {
        let g = session.reply(model, tok, text, config, &mut |t| out.write(t))?;
        out.end()?;
        stats(args, &g);
        Ok(())
    };
    if let Some(p) = &args.prompt {
        return answer(&mut session, p, out);
    }
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    if interactive {
        eprintln!("chat: one message per line; /reset starts over; end with Ctrl-D");
    }
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            eprint!("> ");
        }
        let Some(line) = lines.next() else {
            return Ok(());
        };
        let line = line.map_err(|e| AdapterError::io("reading stdin", "<stdin>", e))?;
        let text = line.trim();
        match text {
            "" => continue,
            "/reset" => {
                session.reset();
                continue;
            }
            _ => answer(&mut session, text, out)?,
        }
    }
}

/// Speeds and the stop reason on stderr.
fn stats(args: &GenerateArgs, g: &Generation) {
    let stop = match &g.stop {
        StopReason::Eos(_) => "eos".to_string(),
        StopReason::StopString(s) => format!("stop string {s:?}"),
        StopReason::MaxTokens => "max_new_tokens".to_string(),
        StopReason::ContextFull => "context full".to_string(),
    };
    note(
        args,
        &format!(
            "[{} prompt tokens in {:.2} s; {} new tokens, {:.1} tokens/s; stop: {stop}]",
            g.prompt_tokens,
            g.prefill_secs,
            g.ids.len(),
            g.decode_tokens_per_sec()
        ),
    );
}

fn note(args: &GenerateArgs, text: &str) {
    if !args.quiet {
        eprintln!("{text}");
    }
}

/// Stdout, flushed after each piece so text appears as it is generated. `closed`: the reader
/// went away (`… | head`), so generation stops quietly.
#[derive(Default)]
struct Stdout {
    closed: bool,
}

impl Stdout {
    fn write(&mut self, text: &str) -> Result<()> {
        let mut s = std::io::stdout().lock();
        match s.write_all(text.as_bytes()).and_then(|()| s.flush()) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.closed = e.kind() == std::io::ErrorKind::BrokenPipe;
                Err(AdapterError::io(
                    "writing the text to stdout",
                    "<stdout>",
                    e,
                ))
            }
        }
    }

    /// Ends an answer with a newline.
    fn end(&mut self) -> Result<()> {
        self.write("\n")
    }
}
