//! `adapters`: inspect PEFT adapters and GGUF files, merge adapters into base checkpoints (HF or
//! GGUF), estimate training memory, generate text.

mod generate;

use adapters_runtime::estimate::{BaseDType, Method};
use adapters_runtime::gguf::{inspect_gguf, is_gguf_path};
use adapters_runtime::hf::LlamaConfig;
use adapters_runtime::peft::{inspect_adapter, merge_checkpoint, merge_gguf, MergeOptions};
use adapters_runtime::train::memory::{estimate_training_quantized, parse_quant};
use adapters_runtime::train::EstimateRequest;
use clap::{Parser, Subcommand, ValueEnum};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

/// DoRA / LoRA adapters in HuggingFace PEFT format.
#[derive(Debug, Parser)]
#[command(name = "adapters", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Lists the adapted modules of a PEFT adapter folder (path, LoRA/DoRA, r, alpha, scaling,
    /// shapes, parameters, bytes) and the totals; or, for a `.gguf` file, its architecture,
    /// Llama configuration, tokenizer and every tensor's type, shape and size.
    Inspect {
        /// The adapter folder (adapter_config.json + adapter_model.safetensors), or a .gguf file.
        dir: PathBuf,
    },
    /// Merges a PEFT adapter into a base checkpoint and writes the merged checkpoint.
    Merge {
        /// The base: a .safetensors file, an HF model folder (single file or sharded), or a
        /// llama.cpp .gguf file.
        #[arg(long)]
        base: PathBuf,
        /// The PEFT adapter folder.
        #[arg(long)]
        adapter: PathBuf,
        /// Where to write: a .safetensors file for a file base, a folder for a folder base. For a
        /// GGUF base: a .gguf file (re-quantized to each tensor's own type), a .safetensors file
        /// or an HF model folder (dequantized, f32).
        #[arg(long)]
        out: PathBuf,
        /// GGUF output only: quantize the merged weights to this GGML type instead of each
        /// tensor's own (q4_0, q4_1, q5_0, q5_1, q8_0, q2k, q3k, q4k, q5k, q6k, q8k).
        #[arg(long, value_name = "FORMAT")]
        quant: Option<String>,
        /// Replace `--out` if it exists.
        #[arg(long)]
        force: bool,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
        /// Write the merged weights even if the adapter or a merged weight holds NaN / ±Inf
        /// values (by default the merge fails naming the tensor, and nothing is written).
        #[arg(long)]
        allow_non_finite: bool,
    },
    /// Estimates the training memory of adapting an HF (Llama-family) model.
    Estimate {
        /// The model's config.json.
        #[arg(long)]
        config: PathBuf,
        /// LoRA or DoRA.
        #[arg(long, value_enum)]
        method: MethodArg,
        /// Adapter rank.
        #[arg(long)]
        rank: usize,
        /// Adapted modules, comma-separated (q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,
        /// down_proj,embed_tokens,lm_head, or all-linear).
        #[arg(long, value_delimiter = ',', required = true)]
        targets: Vec<String>,
        /// Dtype of the frozen base weights and activations.
        #[arg(long, value_enum, default_value = "bf16")]
        dtype: DTypeArg,
        /// Tokens per batch (batch size × sequence length); 0 leaves activations out.
        #[arg(long, default_value_t = 0)]
        batch_tokens: usize,
        /// Sequence length, for the attention scores (0 leaves them out).
        #[arg(long, default_value_t = 0)]
        seq_len: usize,
        /// Store every decoder projection's weight quantized, adapted or not (QLoRA, as
        /// `finetune --quant` loads it): nf4, q4_0, q4_1, q5_0, q5_1, q8_0, q2k, q3k, q4k, q5k,
        /// q6k or q8k (also llama.cpp's Q4_K). Embeddings, norms, biases and the head stay in
        /// --dtype.
        #[arg(long, value_name = "FORMAT")]
        quant: Option<String>,
    },
    /// Generates text with a model (HF folder or .gguf file) and optionally a PEFT adapter:
    /// continues --prompt, or chats (--chat) with the model's chat template. The text is
    /// streamed to stdout; statistics go to stderr.
    Generate(generate::GenerateArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum MethodArg {
    Lora,
    Dora,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DTypeArg {
    F32,
    Bf16,
    F16,
}

/// Runs the command and returns what it prints on stdout.
fn run(cli: Cli) -> adapters_runtime::Result<String> {
    let mut report;
    match cli.command {
        Command::Generate(args) => {
            generate::run(args)?;
            report = String::new();
        }
        Command::Inspect { dir } if is_gguf_path(&dir) => report = inspect_gguf(&dir)?.to_string(),
        Command::Inspect { dir } => report = inspect_adapter(&dir)?.to_string(),
        Command::Merge {
            base,
            adapter,
            out,
            quant,
            force,
            quiet,
            allow_non_finite,
        } => {
            let options = MergeOptions {
                overwrite: force,
                progress: !quiet && std::io::stderr().is_terminal(),
                allow_non_finite,
            };
            let quant = quant.as_deref().map(parse_quant).transpose()?;
            let r = match quant {
                Some(q) if is_gguf_path(&base) => {
                    merge_gguf(&base, &adapter, &out, &options, Some(q))?
                }
                Some(q) => {
                    return Err(adapters_runtime::AdapterError::InvalidArgument {
                        name: "--quant".into(),
                        expected: "a .gguf --base (HF bases are merged in their own dtype)".into(),
                        actual: format!("{} with --base {}", q.name(), base.display()),
                    })
                }
                None => merge_checkpoint(&base, &adapter, &out, &options)?,
            };
            report = format!(
                "merged {} weight(s), passed {} tensor(s) through, wrote {} weights file(s) to {}\n",
                r.merged.len(),
                r.passed_through,
                r.files,
                r.output.display()
            );
            if !r.copied.is_empty() {
                report += &format!("copied: {}\n", r.copied.join(", "));
            }
            if !r.skipped.is_empty() {
                report += &format!(
                    "not copied (other weight formats or folders): {}\n",
                    r.skipped.join(", ")
                );
            }
        }
        Command::Estimate {
            config,
            method,
            rank,
            targets,
            dtype,
            batch_tokens,
            seq_len,
            quant,
        } => {
            let quant = quant.as_deref().map(parse_quant).transpose()?;
            let cfg = LlamaConfig::from_file(&config)?;
            let request = EstimateRequest {
                method: match method {
                    MethodArg::Lora => Method::Lora,
                    MethodArg::Dora => Method::Dora,
                },
                rank,
                targets,
                dtype: match dtype {
                    DTypeArg::F32 => BaseDType::F32,
                    DTypeArg::Bf16 => BaseDType::BF16,
                    DTypeArg::F16 => BaseDType::F16,
                },
                batch_tokens,
                seq_len,
            };
            report = estimate_training_quantized(&cfg, &request, quant)?.to_string();
        }
    }
    Ok(report)
}

/// Writes the command's report to stdout. A closed pipe (`adapters inspect … | head`) ends the
/// command quietly; any other failure (a full disk: `> /dev/full`) is an error naming stdout.
fn print_report(text: &str) -> ExitCode {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: writing the report to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(text) => print_report(&text),
        Err(e) => {
            eprintln!("error: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                if !e.to_string().contains(&s.to_string()) {
                    eprintln!("  caused by: {s}");
                }
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}
