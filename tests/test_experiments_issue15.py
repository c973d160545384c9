"""The configs and runners of the GaP, ProsPr, LRPET, Sup-tickets and i-SpaSP experiments.

The runners run end to end on tiny synthetic data (12 x 12 images whose label says which half is
brighter) and a tiny MLP, a few updates each.
"""

import json

import pytest
from shared_data import tiny_image_data

from experiments import config as config_lib
from experiments import ispasp, lrpet, methods, models, sup_tickets
from experiments import structured as st


@pytest.fixture
def tiny(monkeypatch):
  data = tiny_image_data()
  monkeypatch.setattr(st, "_load", lambda config: data)
  monkeypatch.setitem(
    models._FACTORIES, "tiny_mlp", lambda n: models.LeNet300100(num_classes=n, hidden=(16, 8))
  )
  monkeypatch.setitem(ispasp.MODELS, "tiny", (12,))
  return data


def test_configs():
  gap = config_lib.load_config("mnist_gap")
  assert tuple(gap.methods) == ("dense", "gradual", "gap") and gap.distribution == "erk"
  # 9 GaP steps of 250 updates from update 0, then 750 updates of fine-tuning.
  assert methods.gap_steps(gap) == {"begin": 0, "step_length": 250, "end": 2250}
  assert methods.METHODS["gap"].group == "gap" and not methods.METHODS["gap"].stacks
  pai = config_lib.load_config("mnist_at_init")
  assert "prospr" in pai.methods
  assert (pai.at_init.prospr_steps, pai.at_init.prospr_lr, pai.at_init.prospr_momentum) == (
    3,
    0.1,
    0.0,
  )
  for name, module in (
    ("mnist_sup_tickets", sup_tickets),
    ("mnist_lrpet", lrpet),
    ("mnist_ispasp", ispasp),
  ):
    config = config_lib.load_config(name)
    module.validate(config)
    bad = config_lib.load_config(name)
    bad.methods = ("nope",)
    with pytest.raises(ValueError, match="unknown methods \\['nope'\\]"):
      module.validate(bad)


def test_sup_tickets_runner(tiny, tmp_path):
  config = config_lib.load_config("mnist_sup_tickets")
  config.update(
    model="tiny_mlp", output_dir=str(tmp_path), progress=False, plots=False, methods=("rigl",),
    sparsities=(0.8,), seeds=(0,), num_train_steps=12, cycles=2, cycle_steps=3, batch_size=16,
  )  # fmt: skip
  config.dst.frequency = 2
  result = sup_tickets.run(config)
  [record] = result["records"]
  assert len(record["ticket_accuracy"]) == len(record["superposed_accuracy"]) == 3
  kernels = 144 * 16 + 16 * 8 + 8 * 2
  assert record["superposed_sparsity"] == round(0.8 * kernels) / kernels  # exactly the budget
  assert (tmp_path / "summary.md").exists()
  again = sup_tickets.run(config)  # the finished run is read back, not trained
  assert again["records"] == result["records"]


def test_lrpet_runner(tiny, tmp_path):
  config = config_lib.load_config("mnist_lrpet")
  config.update(
    model="tiny_mlp", output_dir=str(tmp_path), progress=False, plots=False, seeds=(0,),
    prune_ratios=(0.5,), num_train_steps=8, batch_size=64,
  )  # fmt: skip
  records = {r["method"]: r for r in lrpet.run(config)["records"]}
  assert set(records) == set(lrpet.METHODS)
  # ranks 16 - 8 of the 144 x 16 kernel, 8 - 4 of the 16 x 8 one; the output layer full.
  for method in ("lrpet", "lrpet_no_transfer", "svd_retrain"):
    assert records[method]["ranks"] == {"Dense_0/kernel": 8, "Dense_1/kernel": 4}
    assert records[method]["params"] == 8 * (144 + 16) + 16 + 4 * (16 + 8) + 8 + 8 * 2 + 2
    assert records[method]["macs"] == 8 * (144 + 16) + 4 * (16 + 8) + 8 * 2
  # The last update projects: the factorised network computes what the trained one does.
  assert records["lrpet"]["accuracy"] == records["lrpet"]["projected_accuracy"]
  assert max(records["lrpet"]["rank_residual"].values()) < 1e-5
  # lrpet_plain_last truncates the final weights plainly: exact ranks as well.
  assert (
    records["lrpet_plain_last"]["accuracy"] == records["lrpet_plain_last"]["projected_accuracy"]
  )
  assert max(records["lrpet_plain_last"]["rank_residual"].values()) < 1e-5
  assert records["dense"]["params"] == 144 * 16 + 16 + 16 * 8 + 8 + 8 * 2 + 2


def test_ispasp_runner(tiny, tmp_path):
  config = config_lib.load_config("mnist_ispasp")
  config.update(
    networks=("tiny",), output_dir=str(tmp_path), progress=False, plots=False, seeds=(0,),
    ratios=(0.5,), num_train_steps=6, batch_size=32, calibration=64, iterations=3,
    finetune_steps=2,
  )  # fmt: skip
  rows = ispasp.run(config)["records"]
  assert {r["method"] for r in rows} == {"dense", "ispasp", "l1", "random"}
  assert all(r["units"] == [6] for r in rows if r["method"] != "dense")
  record = json.loads((tmp_path / "runs" / "tiny_s0.json").read_text())
  assert all(r["output_residual"] >= 0 for r in record["rows"] if r["method"] != "dense")
