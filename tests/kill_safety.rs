//! Kill tests: writers SIGKILLed at random times never lose or half-publish an output.
//!
//! For `save_adapter`, trainer checkpoints and `adapters merge` (folder and single-file output),
//! a good output is made first; then `ADAPTERS_KILL_TRIALS` times (default 5) a child process
//! rewriting it is killed at a random time (seeded, spread over the write's measured duration),
//! and the previous / last complete output must still load. A final, uninterrupted run must
//! leave no `.partial`, `.old`, `.deleting` or `.tmp*` entry behind. A write past a file-size
//! limit (`RLIMIT_FSIZE`, SIGXFSZ ignored: `write` fails with EFBIG as on a full disk) must exit
//! with a clear error and leave the previous output intact; so must a write to a really full
//! filesystem and to a read-only one (a small tmpfs mounted for the test; skipped where mounting
//! is not permitted).
//!
//! The workloads run in this test binary itself, re-executed with `ADAPTERS_KILL_ROLE` set (see
//! [`kill_role`]); `merge` calls `merge_checkpoint` as `adapters merge --force` does.

mod train_support;

use adapters_runtime::candle_core::DType;
use adapters_runtime::candle_nn::VarMap;
use adapters_runtime::models::llama::{load_pretrained, BaseMode, Llama};
use adapters_runtime::peft::AdapterCheckpoint;
use adapters_runtime::train::train_state::{
    latest_checkpoint, list_checkpoints, read_state, OPTIMIZER_FILE, TRAINABLE_FILE,
};
use adapters_runtime::train::{
    prepare, BatchLoader, Example, PackMode, PackOptions, Tokenizer, TrainConfig, Trainer,
};
use adapters_runtime::{
    load_adapter, merge_checkpoint, save_adapter, Adapters, LoadOptions, MergeOptions, SaveOptions,
};
use rand::{Rng, SeedableRng};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use train_support::{scratch, tensor, test_device, TinyLm};

const ROLE: &str = "ADAPTERS_KILL_ROLE";
const VOCAB: usize = 2048;

fn trials() -> usize {
    std::env::var("ADAPTERS_KILL_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
}

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/peft")
        .join(case)
}

// ---------------------------------------------------------------------------------------------
// The workloads, run in a child process.

/// Not a test of its own: the entry point of the child processes. Without `ADAPTERS_KILL_ROLE`
/// it does nothing; with it, it runs that workload and exits.
#[test]
fn kill_role() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let out = PathBuf::from(std::env::var("ADAPTERS_KILL_OUT").unwrap());
    let n: u64 = std::env::var("ADAPTERS_KILL_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let result = match role.as_str() {
        "save-adapter" => save_adapter_loop(&out, n),
        "merge" => {
            // What `adapters merge --force` runs (the binary belongs to another package, so a
            // test of this one cannot rely on it being built).
            let base = PathBuf::from(std::env::var("ADAPTERS_KILL_BASE").unwrap());
            let adapter = PathBuf::from(std::env::var("ADAPTERS_KILL_ADAPTER").unwrap());
            let options = MergeOptions {
                overwrite: true,
                ..Default::default()
            };
            merge_checkpoint(&base, &adapter, &out, &options).map(|_| ())
        }
        "train" => train_run(&out, n),
        other => panic!("unknown role {other}"),
    };
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2)
        }
    }
}

/// The tiny Llama fixture, bare.
fn bare_llama() -> Llama {
    let dir = fixture("tiny_llama_dora").join("model");
    load_pretrained(&dir, DType::F32, &test_device(), BaseMode::Frozen)
        .unwrap()
        .model
}

/// The tiny Llama fixture with DoRA attached everywhere.
fn llama() -> (Llama, VarMap) {
    let mut m = bare_llama();
    let varmap = VarMap::new();
    m.attach_adapters(&varmap, 7).unwrap();
    (m, varmap)
}

/// Saves the adapters of a tiny model `n` times to `out`, with different values each time.
fn save_adapter_loop(out: &Path, n: u64) -> adapters_runtime::Result<()> {
    let (m, _vm) = llama();
    for i in 0..n {
        for (k, (_, v)) in m.named_trainable_vars()?.into_iter().enumerate() {
            v.set(&tensor(100 + i * 31 + k as u64, v.dims(), 0.1))?;
        }
        save_adapter(&m, out, &SaveOptions::default())?;
    }
    Ok(())
}

/// Trains `steps` steps with a checkpoint every step (keeping 2) under `dir`.
fn train_run(dir: &Path, steps: u64) -> adapters_runtime::Result<()> {
    let tok = Tokenizer::byte_level();
    let texts: Vec<Example> = (0..8)
        .map(|i| Example::Text(format!("text number {i}")))
        .collect();
    let pack = PackOptions {
        seq_len: 16,
        mode: PackMode::Pad,
    };
    let p = prepare(&texts, &tok, pack).unwrap();
    let mut loader =
        BatchLoader::new(p.sequences, 4, tok.pad_id(), &test_device(), 1, true).unwrap();
    let (mut m, _) = TinyLm::new(VOCAB, 3);
    let mut tc = TrainConfig::new(steps, 1e-2);
    tc.progress = false;
    tc.checkpoint_every = Some(1);
    tc.checkpoint_dir = Some(dir.to_path_buf());
    tc.keep_checkpoints = 2;
    let mut trainer = Trainer::new(&m, tc)?;
    trainer.train(&mut m, &mut loader, |m, b, t| m.loss(b, t))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The harness.

/// A writer under test: how to start it and how to check its output.
struct Writer {
    name: &'static str,
    /// The output (a folder or a file) whose parent folder is checked for leftovers.
    target: PathBuf,
    /// Starts one writing run.
    command: Box<dyn Fn() -> Command>,
    /// Checks that the output is complete and loads; panics otherwise.
    check: Box<dyn Fn(&Path)>,
}

fn role_command(role: &str, out: &Path, n: u64) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", "kill_role", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env("ADAPTERS_KILL_OUT", out)
        .env("ADAPTERS_KILL_N", n.to_string());
    c
}

fn run_to_end(mut c: Command) -> Output {
    let out = c
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "an uninterrupted run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Names in `dir` that an interrupted write could leave behind.
fn leftovers(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.ends_with(".partial")
                || n.ends_with(".old")
                || n.ends_with(".deleting")
                || n.starts_with(".tmp")
                || n.contains(".tmp")
        })
        .collect();
    v.sort();
    v
}

/// Makes a good output, measures a run, kills `trials()` runs at random times, checks the output
/// after each, then runs once to the end and checks nothing is left behind.
fn kill_trials(w: &Writer, seed: u64) {
    let parent = w.target.parent().unwrap().to_path_buf();
    run_to_end((w.command)());
    // Timed on a second run, with the caches warm.
    let start = Instant::now();
    run_to_end((w.command)());
    let full = start.elapsed();
    (w.check)(&w.target);
    let n = trials();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut stale_seen = 0usize;
    let mut finished = 0usize;
    let (mut lo, mut hi) = (Duration::MAX, Duration::ZERO);
    for i in 0..n {
        let mut child = (w.command)()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Spread over the whole run, a little beyond its measured length.
        let at = full.mul_f64(rng.random_range(0.0..1.1));
        lo = lo.min(at);
        hi = hi.max(at);
        std::thread::sleep(at);
        let _ = child.kill();
        let status = child.wait().unwrap();
        if status.success() {
            finished += 1;
        }
        stale_seen += leftovers(&parent).len();
        if w.target.is_dir() {
            stale_seen += leftovers(&w.target).len();
        }
        assert!(
            w.target.exists(),
            "{}: trial {i} (killed at {at:?}): the output is gone",
            w.name
        );
        (w.check)(&w.target);
    }
    // A complete run cleans the partials of killed ones.
    run_to_end((w.command)());
    (w.check)(&w.target);
    let left = leftovers(&parent);
    assert!(
        left.is_empty(),
        "{}: left behind after a complete run: {left:?}",
        w.name
    );
    eprintln!(
        "{}: {n} trials, run {full:?}, killed at {lo:?}..{hi:?}, {finished} finished before the kill, \
         {stale_seen} partial(s) seen after kills (cleaned), output intact every time",
        w.name
    );
}

fn check_adapter(dir: &Path) {
    AdapterCheckpoint::read(dir).unwrap_or_else(|e| panic!("adapter {}: {e}", dir.display()));
    let mut m = bare_llama();
    load_adapter(&mut m, dir, &LoadOptions::default())
        .unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()));
    let notes = std::fs::read_to_string(dir.join("notes.md"))
        .unwrap_or_else(|e| panic!("the user's notes.md in {}: {e}", dir.display()));
    assert_eq!(notes, "keep me");
}

fn check_checkpoints(root: &Path) {
    let latest = latest_checkpoint(root)
        .unwrap()
        .unwrap_or_else(|| panic!("no complete checkpoint under {}", root.display()));
    let state = read_state(&latest).unwrap_or_else(|e| panic!("{}: {e}", latest.display()));
    assert!(state.step >= 1);
    for (_, dir) in list_checkpoints(root).unwrap() {
        read_state(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for f in [TRAINABLE_FILE, OPTIMIZER_FILE] {
            let p = dir.join(f);
            let t = adapters_runtime::candle_core::safetensors::load(&p, &test_device())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert!(!t.is_empty(), "{} holds no tensor", p.display());
        }
    }
    // Nothing but complete checkpoints and hidden leftovers.
    for e in std::fs::read_dir(root).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            name.starts_with('.')
                || list_checkpoints(root)
                    .unwrap()
                    .iter()
                    .any(|(_, p)| p.ends_with(&name)),
            "{name} under {} is neither a complete checkpoint nor hidden",
            root.display()
        );
    }
}

/// The bytes of every file in a folder (or of a file), by name.
fn snapshot(path: &Path) -> Vec<(String, Vec<u8>)> {
    if path.is_file() {
        return vec![(String::new(), std::fs::read(path).unwrap())];
    }
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(path)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn parse_safetensors(path: &Path) {
    let files: Vec<PathBuf> = if path.is_file() {
        vec![path.to_path_buf()]
    } else {
        std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect()
    };
    assert!(
        !files.is_empty(),
        "no safetensors file in {}",
        path.display()
    );
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        safetensors::SafeTensors::deserialize(&bytes)
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    }
}

fn merge_command(base: PathBuf, adapter: PathBuf, out: PathBuf) -> Box<dyn Fn() -> Command> {
    Box::new(move || {
        let mut c = role_command("merge", &out, 1);
        c.env("ADAPTERS_KILL_BASE", &base)
            .env("ADAPTERS_KILL_ADAPTER", &adapter);
        c
    })
}

/// A merge writer whose every output must equal the first complete one, byte for byte.
fn merge_writer(name: &'static str, base: PathBuf, adapter: PathBuf, out: PathBuf) -> Writer {
    run_to_end(merge_command(base.clone(), adapter.clone(), out.clone())());
    let reference = snapshot(&out);
    Writer {
        name,
        target: out.clone(),
        command: merge_command(base, adapter, out),
        check: Box::new(move |p| {
            parse_safetensors(p);
            assert!(
                snapshot(p) == reference,
                "{}: differs from a complete merge",
                p.display()
            );
        }),
    }
}

fn save_adapter_writer(dir: &Path) -> Writer {
    let out = dir.join("adapter");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("notes.md"), "keep me").unwrap();
    let o = out.clone();
    Writer {
        name: "save_adapter",
        target: out,
        command: Box::new(move || role_command("save-adapter", &o, 20)),
        check: Box::new(check_adapter),
    }
}

#[test]
fn save_adapter_survives_kills() {
    let dir = scratch("kill-save");
    kill_trials(&save_adapter_writer(&dir), 1);
    let _ = std::fs::remove_dir_all(dir);
}

fn train_writer(out: &Path) -> Writer {
    let o = out.to_path_buf();
    Writer {
        name: "trainer checkpoints",
        target: o.clone(),
        command: Box::new(move || role_command("train", &o, 12)),
        check: Box::new(check_checkpoints),
    }
}

#[test]
fn trainer_checkpoints_survive_kills() {
    let dir = scratch("kill-train");
    let out = dir.join("ckpt");
    let w = train_writer(&out);
    kill_trials(&w, 2);
    // Inside the checkpoint folder too: no staging or retired folder stays.
    let left = leftovers(&out);
    assert!(left.is_empty(), "left in {}: {left:?}", out.display());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn merge_to_a_folder_survives_kills() {
    let dir = scratch("kill-merge-dir");
    let case = fixture("tiny_llama_dora");
    let w = merge_writer(
        "merge (folder)",
        case.join("model"),
        case.join("adapter"),
        dir.join("merged"),
    );
    kill_trials(&w, 3);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn merge_to_a_file_survives_kills() {
    let dir = scratch("kill-merge-file");
    let case = fixture("lora_r4");
    let w = merge_writer(
        "merge (file)",
        case.join("base.safetensors"),
        case.join("adapter"),
        dir.join("merged.safetensors"),
    );
    kill_trials(&w, 4);
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------------------------------------
// A file-size limit: the write fails cleanly (as on a full disk) and loses nothing.

/// Runs `c` with files limited to `bytes` and SIGXFSZ ignored, so `write` fails with EFBIG.
fn run_size_limited(mut c: Command, bytes: u64) -> Output {
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        c.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: bytes as libc::rlim_t,
                rlim_max: bytes as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

fn assert_clean_failure(what: &str, out: &Output, target: &Path) {
    assert_failure_naming(what, out, target, "File too large");
}

/// The run exited with an error (no panic, no signal) whose message names the output's folder and
/// `cause`, and left no partial beside the output.
fn assert_failure_naming(what: &str, out: &Output, target: &Path, cause: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code().is_some_and(|c| c != 0),
        "{what}: expected an error exit, got {:?}: {err}",
        out.status
    );
    assert!(!err.contains("panicked"), "{what}: panicked: {err}");
    let parent = target.parent().unwrap().to_string_lossy().into_owned();
    assert!(
        err.contains(cause) && err.contains(&*parent),
        "{what}: the error should name the file and the cause: {err}"
    );
    let left = leftovers(target.parent().unwrap());
    assert!(left.is_empty(), "{what}: left behind: {left:?}");
    eprintln!("{what}: {}", err.trim());
}

#[test]
fn a_file_size_limit_fails_cleanly_and_loses_nothing() {
    let dir = scratch("kill-fsize");
    // save_adapter: the adapter file is larger than the limit.
    let w = save_adapter_writer(&dir);
    run_to_end((w.command)());
    let before = snapshot(&w.target);
    let out = run_size_limited((w.command)(), 16 * 1024);
    assert_clean_failure("save_adapter", &out, &w.target);
    assert!(
        snapshot(&w.target) == before,
        "the previous adapter changed"
    );
    check_adapter(&w.target);

    // Trainer checkpoints: the first one of a new run fails; the previous run's stay.
    let ckpt = dir.join("ckpt");
    let w = train_writer(&ckpt);
    run_to_end((w.command)());
    let before: Vec<_> = list_checkpoints(&ckpt)
        .unwrap()
        .into_iter()
        .map(|(_, p)| snapshot(&p))
        .collect();
    let out = run_size_limited((w.command)(), 16 * 1024);
    assert_clean_failure("trainer checkpoint", &out, &ckpt.join("step-00000001"));
    let after: Vec<_> = list_checkpoints(&ckpt)
        .unwrap()
        .into_iter()
        .map(|(_, p)| snapshot(&p))
        .collect();
    assert!(after == before, "the previous checkpoints changed");
    check_checkpoints(&ckpt);

    // merge, folder and single file.
    let case = fixture("tiny_llama_dora");
    let w = merge_writer(
        "merge (folder)",
        case.join("model"),
        case.join("adapter"),
        dir.join("merged"),
    );
    let before = snapshot(&w.target);
    let out = run_size_limited((w.command)(), 64 * 1024);
    assert_clean_failure("merge (folder)", &out, &w.target);
    assert!(snapshot(&w.target) == before, "the previous merge changed");
    (w.check)(&w.target);

    let case = fixture("lora_r4");
    let w = merge_writer(
        "merge (file)",
        case.join("base.safetensors"),
        case.join("adapter"),
        dir.join("merged.safetensors"),
    );
    let before = snapshot(&w.target);
    let out = run_size_limited((w.command)(), 1024);
    assert_clean_failure("merge (file)", &out, &w.target);
    assert!(snapshot(&w.target) == before, "the previous merge changed");
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------------------------------------
// A really full filesystem and a read-only one: a small tmpfs mounted for the test.

/// A tmpfs mounted at a folder, unmounted (lazily) on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` at `dir`; `None` (the test is skipped) where that is not
    /// permitted (not root, no `CAP_SYS_ADMIN`, a container without mounts).
    fn mount(dir: &Path, bytes: u64) -> Option<Tmpfs> {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        std::fs::create_dir_all(dir).unwrap();
        let target = CString::new(dir.as_os_str().as_bytes()).unwrap();
        let opts = CString::new(format!("size={bytes},mode=0755")).unwrap();
        // SAFETY: valid NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        if rc != 0 {
            eprintln!(
                "skipped: cannot mount a tmpfs at {}: {}",
                dir.display(),
                std::io::Error::last_os_error()
            );
            return None;
        }
        Some(Tmpfs(dir.to_path_buf()))
    }

    /// Remounts it read-only.
    fn make_read_only(&self) {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let target = CString::new(self.0.as_os_str().as_bytes()).unwrap();
        // SAFETY: as in `mount`.
        let rc = unsafe {
            libc::mount(
                std::ptr::null(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT | libc::MS_RDONLY,
                std::ptr::null(),
            )
        };
        assert_eq!(
            rc,
            0,
            "remount read-only: {}",
            std::io::Error::last_os_error()
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let target = CString::new(self.0.as_os_str().as_bytes()).unwrap();
        // SAFETY: as in `mount`.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Fills the filesystem holding `dir` until a write fails with ENOSPC.
fn fill(dir: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let block = vec![0x5au8; 4096];
    loop {
        match f.write_all(&block) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", dir.display()),
        }
    }
    // A few more bytes than a page may still fit; write them too so the disk is really full.
    while f.write(&[0u8; 1]).is_ok_and(|n| n == 1) {}
}

/// The four writers with outputs under `root`, each output made once (complete).
fn writers_in(root: &Path) -> Vec<Writer> {
    let case = fixture("tiny_llama_dora");
    let lora = fixture("lora_r4");
    let mut v = vec![save_adapter_writer(root), train_writer(&root.join("ckpt"))];
    for w in &v {
        run_to_end((w.command)());
    }
    v.push(merge_writer(
        "merge (folder)",
        case.join("model"),
        case.join("adapter"),
        root.join("merged"),
    ));
    v.push(merge_writer(
        "merge (file)",
        lora.join("base.safetensors"),
        lora.join("adapter"),
        root.join("merged.safetensors"),
    ));
    v
}

/// Every file under `root` (recursively) with its bytes, minus the filler.
fn tree(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.file_name().is_some_and(|n| n != "filler") {
                let bytes = std::fs::read(&p).unwrap();
                out.push((p, bytes));
            }
        }
    }
    let mut v = Vec::new();
    walk(root, &mut v);
    v.sort();
    v
}

/// Runs each writer again over `root` once `break_it` has made writing impossible: each must exit
/// with an error naming its output folder and `cause`; every previous output must stay
/// byte-for-byte unchanged, still load, and have no partial beside it.
fn writers_fail_cleanly(root: &Path, break_it: impl FnOnce(&Path), cause: &str) {
    let writers = writers_in(root);
    let before = tree(root);
    break_it(root);
    for w in &writers {
        let out = (w.command)()
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        // The trainer's errors name the checkpoint folder, the others the output's parent.
        let named = if w.target.ends_with("ckpt") {
            w.target.join("step-00000001")
        } else {
            w.target.clone()
        };
        assert_failure_naming(w.name, &out, &named, cause);
        if w.target.is_dir() {
            let left = leftovers(&w.target);
            assert!(left.is_empty(), "{}: left inside: {left:?}", w.name);
        }
    }
    assert!(tree(root) == before, "a previous output changed");
    for w in &writers {
        (w.check)(&w.target);
    }
}

#[test]
fn a_full_filesystem_fails_cleanly_and_loses_nothing() {
    let dir = scratch("kill-enospc");
    if let Some(fs) = Tmpfs::mount(&dir, 4 << 20) {
        writers_fail_cleanly(&dir, fill, "No space left on device");
        drop(fs);
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_read_only_filesystem_error_names_the_path() {
    let dir = scratch("kill-erofs");
    if let Some(fs) = Tmpfs::mount(&dir, 4 << 20) {
        writers_fail_cleanly(&dir, |_| fs.make_read_only(), "Read-only file system");
        drop(fs);
    }
    let _ = std::fs::remove_dir_all(dir);
}
