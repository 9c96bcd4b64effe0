//! Run configurations without burn: every shipped configuration loads, the variants of a paper
//! row differ from it exactly where their names say, and `base = "FILE"` chains resolve (and fail
//! with messages that name the file).

use std::path::{Path, PathBuf};

use fullbatch::Error;
use fullbatch::run_dir::config::{Mode, RunConfig, resolved_table};

fn shipped(name: &str) -> RunConfig {
    shipped_in("experiments/cifar10", name)
}

fn shipped_in(dir: &str, name: &str) -> RunConfig {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir).join(name);
    RunConfig::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every shipped configuration loads and validates, is named after its file, and round-trips
/// through the stored form (the resolved TOML a run directory keeps).
#[test]
fn shipped_configs_are_valid() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("experiments/cifar10");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let config = RunConfig::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(Some(config.name.as_str()), path.file_stem().and_then(|s| s.to_str()), "{}", path.display());
        let stored = config.to_toml().unwrap();
        assert!(!stored.contains("base"), "{}", path.display());
        assert_eq!(RunConfig::from_toml(&stored).unwrap(), config, "{}", path.display());
        n += 1;
    }
    assert!(n >= 21, "only {n} configs in {}", dir.display());
}

/// Each `-noaug` twin is its row with augmentation off and nothing else changed; the
/// `fb6-in-practice-fixed*` rows (this project's variant, no official command) are
/// `fb6-in-practice` with a fixed augmented set of 10 and 40 copies.
#[test]
fn row_variants_differ_only_where_named() {
    for row in ["sgd", "fb1-naive", "fb2-longer", "fb3-clip", "fb4-reg", "fb5-strong-reg", "fb6-in-practice"] {
        let base = shipped(&format!("{row}.toml"));
        let mut twin = shipped(&format!("{row}-noaug.toml"));
        assert!(base.augmentation.enabled && !twin.augmentation.enabled, "{row}");
        twin.name = base.name.clone();
        twin.augmentation.enabled = true;
        assert_eq!(twin, base, "{row}-noaug");
    }
    let base = shipped("fb6-in-practice.toml");
    for copies in [10, 40] {
        let mut fixed = shipped(&format!("fb6-in-practice-fixed{copies}.toml"));
        assert_eq!(fixed.augmentation.fixed_copies, Some(copies));
        fixed.name = base.name.clone();
        fixed.augmentation.fixed_copies = base.augmentation.fixed_copies;
        assert_eq!(fixed, base, "fixed{copies}");
    }
}

/// The fixed-data-set rows of the official code (JonasGeiping/fullbatchtraining, train.sh lines
/// 29-33 and 36 at the publication commit 8b654c5, train_distributed_multinode.sh lines 32-36 and
/// 41-45 at 5a772a2): FB1 .. FB strong reg on 10 and 40 augmented copies drawn once. Each is its
/// augmented row with `fixed_copies` set and only the checkpoint interval changed, and its header
/// names the official command it follows.
#[test]
fn official_fixed_copy_rows_are_their_rows_on_fixed_copies() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("experiments/cifar10");
    for row in ["fb1-naive", "fb2-longer", "fb3-clip", "fb4-reg", "fb5-strong-reg"] {
        let base = shipped(&format!("{row}.toml"));
        assert_eq!(base.augmentation.fixed_copies, None, "{row}");
        for copies in [10, 40] {
            let file = format!("{row}-fixed{copies}.toml");
            let mut fixed = shipped(&file);
            assert_eq!(fixed.augmentation.fixed_copies, Some(copies), "{file}");
            assert!(fixed.augmentation.enabled, "{file}");
            assert_eq!(fixed.total_steps(), base.total_steps(), "{file}");
            fixed.name = base.name.clone();
            fixed.augmentation.fixed_copies = None;
            fixed.checkpoint_every = base.checkpoint_every;
            assert_eq!(fixed, base, "{file}");
            let text = std::fs::read_to_string(dir.join(&file)).unwrap();
            assert!(
                text.contains("JonasGeiping/fullbatchtraining")
                    && text.contains(".sh line ")
                    && text.contains(&format!("data.db.rounds={copies}")),
                "{file} does not cite its official command"
            );
        }
    }
}

/// The scaled protocol (experiments/scaled/): each row is its paper row on 5,000 Fashion-MNIST
/// images (2,000 test), width 32, with its steps, warmup and cosine length shortened, and nothing
/// else changed; the full-batch rows after FB1 share one schedule.
#[test]
fn scaled_rows_are_their_paper_rows_shortened() {
    let rows = [("sgd", 20, 1, 20), ("fb1-naive", 20, 1, 20), ("fb2-longer", 150, 20, 200), ("fb4-reg", 150, 20, 200)];
    for (row, steps, warmup, t_max) in rows {
        let paper = shipped(&format!("{row}.toml"));
        let mut scaled = shipped_in("experiments/scaled", &format!("scaled-{row}.toml"));
        assert_eq!(scaled.data.dataset.name(), "fashion-mnist", "{row}");
        assert_eq!((scaled.data.train_subset, scaled.data.test_subset), (Some(5000), Some(2000)), "{row}");
        assert_eq!(scaled.model.width, 32, "{row}");
        assert_eq!(scaled.total_steps(), steps, "{row}");
        assert_eq!((scaled.optimizer.warmup, scaled.optimizer.t_max), (warmup, t_max), "{row}");
        // Put the paper row's values back: nothing else may differ.
        scaled.name = paper.name.clone();
        scaled.data = paper.data.clone();
        scaled.model.width = paper.model.width;
        scaled.optimizer.warmup = paper.optimizer.warmup;
        scaled.optimizer.t_max = paper.optimizer.t_max;
        (scaled.eval_every, scaled.checkpoint_every) = (paper.eval_every, paper.checkpoint_every);
        match &mut scaled.mode {
            Mode::FullBatch { steps, .. } => *steps = paper.total_steps(),
            Mode::Sgd { epochs, .. } => *epochs = paper.total_steps(),
        }
        assert_eq!(scaled, paper, "scaled-{row}");
    }
}

const BASE: &str = r#"
name = "base-run"
seed = 3
eval_every = 2
checkpoint_every = 2

[data]
dataset = { synthetic = { n = 64, n_test = 32, side = 16, noise = 20.0, classes = 4 } }

[augmentation]
enabled = true

[model]
width = 4
blocks = [1, 1]

[mode.full_batch]
steps = 4
block_size = 16
shuffle_blocks = false
regulariser_alpha = 0.0

[optimizer]
lr = 0.1
momentum = 0.9
nesterov = true
weight_decay = 5e-4
warmup = 1
t_max = 4
"#;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_base_is_overridden_key_by_key_through_a_chain() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "base.toml", BASE);
    std::fs::create_dir(tmp.path().join("rows")).unwrap();
    write(
        &tmp.path().join("rows"),
        "middle.toml",
        "base = \"../base.toml\"\nname = \"middle\"\n[optimizer]\nlr = 0.2\n[mode.full_batch]\nclip = 0.25\n",
    );
    let top = write(
        &tmp.path().join("rows"),
        "top.toml",
        "base = \"middle.toml\"\nname = \"top\"\n[model]\nblocks = [2]\n[data.dataset.synthetic]\nn = 128\n",
    );
    let config = RunConfig::load(&top).unwrap();
    let mut expected = RunConfig::from_toml(BASE).unwrap();
    expected.name = "top".into();
    expected.optimizer.lr = 0.2;
    expected.model.blocks = vec![2];
    match &mut expected.mode {
        Mode::FullBatch { clip, .. } => *clip = Some(0.25),
        other => panic!("the base is full batch: {other:?}"),
    }
    let table = resolved_table(&top).unwrap();
    assert!(!table.contains_key("base"));
    let synthetic = &table["data"]["dataset"]["synthetic"];
    assert_eq!(synthetic["n"].as_integer(), Some(128));
    assert_eq!(synthetic["n_test"].as_integer(), Some(32), "the rest of the base's table is kept");
    assert_eq!(config.data, RunConfig::from_toml(&toml::to_string(&table).unwrap()).unwrap().data);
    let mut without_data = config.clone();
    without_data.data = expected.data.clone();
    assert_eq!(without_data, expected);
}

#[test]
fn another_mode_replaces_the_base_mode() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "base.toml", BASE);
    let sgd = write(
        tmp.path(),
        "sgd.toml",
        "base = \"base.toml\"\nname = \"sgd\"\n[mode.sgd]\nbatch_size = 16\nepochs = 4\n",
    );
    let config = RunConfig::load(&sgd).unwrap();
    assert!(matches!(config.mode, Mode::Sgd { batch_size: 16, epochs: 4, clip: None }), "{:?}", config.mode);
}

#[test]
fn bad_bases_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = write(tmp.path(), "missing.toml", "base = \"nowhere.toml\"\nname = \"x\"\n");
    match RunConfig::load(&missing) {
        Err(Error::Io { path, .. }) => assert!(path.ends_with("nowhere.toml"), "{}", path.display()),
        other => panic!("expected an I/O error naming the base, got {other:?}"),
    }
    write(tmp.path(), "a.toml", "base = \"b.toml\"\n");
    let b = write(tmp.path(), "b.toml", "base = \"a.toml\"\n");
    let msg = RunConfig::load(&b).unwrap_err().to_string();
    assert!(msg.contains("loops") && msg.contains("a.toml") && msg.contains("b.toml"), "{msg}");
    let number = write(tmp.path(), "number.toml", "base = 3\n");
    let msg = RunConfig::load(&number).unwrap_err().to_string();
    assert!(msg.contains("number.toml") && msg.contains("base"), "{msg}");
    // An unknown key still names itself (and the file) after merging.
    write(tmp.path(), "base.toml", BASE);
    let typo = write(tmp.path(), "typo.toml", "base = \"base.toml\"\n[optimizer]\nlrate = 0.3\n");
    let msg = RunConfig::load(&typo).unwrap_err().to_string();
    assert!(msg.contains("typo.toml") && msg.contains("lrate"), "{msg}");
}
