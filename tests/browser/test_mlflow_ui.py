"""What a person sees in the MLflow UI, checked in headless Chromium against the real stack.

One module-wide stack (SeaweedFS + MLflow server), one tiny sweep into it (an FP32 and a PTQ child,
the PTQ one registered, promoted and gated by the real deploy controller), then each test opens one
page the way a user would. Debian's ``chromium`` drives it (never ``playwright install``); pages are
waited for with ``load`` and then for the text expected on them: MLflow's UI polls forever, so
``networkidle`` never comes. Screenshots go to ``outputs/screenshots/`` (``$EDGEQAT_SCREENSHOTS``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.fixtures.servers import MlflowServer, MlflowServerFactory, S3Server

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
SHOTS = Path(os.environ.get("EDGEQAT_SCREENSHOTS", REPO / "outputs" / "screenshots"))
TINY = ["data=digits", "data.image_size=16", "model=resnet18", "model.name=test_resnet", "trainer.max_epochs=1",
        "trainer.limit_train_batches=4", "trainer.enable_progress_bar=false", "quant.benchmark_resolutions=[]",
        "quant.latency_iters=5", "quant.calibration_batches=2"]
WAIT_MS = 30_000


@dataclass
class UiStack:
    server: MlflowServer
    client: MlflowClient
    experiment_id: str
    parent: object  # the sweep's parent run
    fp32: object  # its children
    int8: object
    model_name: str
    version: str

    def url(self, fragment: str) -> str:
        return f"{self.server.url}/#{fragment}"


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "edgeqat", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _env(server: MlflowServer, s3: S3Server) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    return {**keep, **server.env(), **s3.env()}


@pytest.fixture(scope="module")
def ui(mlflow_server_module: MlflowServerFactory, seaweedfs: S3Server,
       tmp_path_factory: pytest.TempPathFactory) -> UiStack:
    if not CHROMIUM.exists():
        reason = "Debian's chromium is not installed: apt-get install -y chromium (.ci/run does)"
        if os.environ.get("EDGEQAT_REQUIRE_BROWSER"):  # set by .ci/run: there, a skip would hide a failure
            pytest.fail(reason)
        pytest.skip(reason)
    server = mlflow_server_module(s3=seaweedfs)
    work = tmp_path_factory.mktemp("ui")
    env = _env(server, seaweedfs)
    _cli(["train", "-m", *TINY, "quant=fp32,ptq_int8", "tracking.experiment_name=ui", f"output_dir={work}/out"],
         env, work)
    client = MlflowClient(server.url)
    experiment_id = client.get_experiment_by_name("ui").experiment_id
    runs = client.search_runs([experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("edgeqat.sweep") == "parent"]
    children = {r.data.tags.get("edgeqat.sweep.overrides"): r for r in runs if r is not parent}
    name, version = children["quant=ptq_int8"].data.tags["edgeqat.model_version"].split("/")
    # the registry hand-off as a user drives it: promote, then one pass of the real deploy controller
    _cli(["promote", name, version, "--alias", "production"], env, work)
    _cli(["deploy", "reconcile", "--home", str(work / ".edgeqat")], env, work)
    return UiStack(server, client, experiment_id, parent, children["quant=fp32"], children["quant=ptq_int8"],
                   name, version)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, request: pytest.FixtureRequest) -> Iterator[object]:
    """A fresh tab, wide enough for the runs table's extra columns; its screenshot is kept after the test."""
    context = browser.new_context(viewport={"width": 2200, "height": 1100})
    tab = context.new_page()
    tab.set_default_timeout(WAIT_MS)
    try:
        yield tab
    finally:
        SHOTS.mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(SHOTS / f"{request.node.name}.png"))
        context.close()


def _open(page, url: str, expect: str) -> None:
    """Load a page and wait for ``expect`` on it; dismiss MLflow's first-visit popover if it shows."""
    page.goto(url, wait_until="load")
    got_it = page.get_by_role("button", name="Got it")
    if got_it.count():
        got_it.first.click()
    page.get_by_text(expect).first.wait_for()


def _add_columns(page, names: list[str]) -> None:
    """Tick columns in the runs table's "Columns" menu, as a user would: search, then tick the match."""
    page.get_by_role("button", name="Columns", exact=True).click()
    tree = page.get_by_test_id("column-selector-tree")
    for name in names:
        page.get_by_placeholder("Search columns").fill(name)
        leaf = tree.locator(".du-bois-light-tree-node-content-wrapper", has_text=name).last
        leaf.wait_for()
        page.wait_for_timeout(500)  # the filtered tree re-renders once more after the search settles
        leaf.click()
    page.keyboard.press("Escape")


def test_runs_table_in_model_training_view_shows_status_progress_and_eta(ui: UiStack, page) -> None:
    _open(page, ui.url(f"/experiments/{ui.experiment_id}/runs?workflowType=machine_learning"),
          ui.parent.info.run_name)
    assert page.get_by_text("Model training").first.is_visible()
    _add_columns(page, ["edgeqat.status", "edgeqat.progress", "edgeqat.eta_s", "test/acc_int8"])
    headers = page.locator("[role=columnheader]").all_inner_texts()
    assert {"edgeqat.status", "edgeqat.progress", "edgeqat.eta_s", "test/acc_int8"} <= set(headers)
    # the sweep's children fold under the parent: unfold them
    page.locator(f'[role=row][row-id="{ui.parent.info.run_id}"] button').first.click()
    for child in (ui.fp32, ui.int8):
        row = page.locator(f'[role=row][row-id="{child.info.run_id}"]')
        row.first.wait_for()
        text = " ".join(row.all_inner_texts())
        assert child.info.run_name in text and "FINISHED" in text and "100" in text  # status, progress
    int8_cells = " ".join(page.locator(f'[role=row][row-id="{ui.int8.info.run_id}"]').all_inner_texts())
    assert f"{ui.int8.data.metrics['test/acc_int8']:.4f}"[:5] in int8_cells


def test_run_page_shows_the_int8_accuracy_and_the_verdict(ui: UiStack, page) -> None:
    run = ui.int8
    _open(page, ui.url(f"/experiments/{ui.experiment_id}/runs/{run.info.run_id}"), "test/acc_int8")
    body = page.inner_text("body")
    assert run.data.tags["mlflow.note.content"] in body  # "Finished: INT8 test accuracy ..."
    value = re.search(r"test/acc_int8\s+([0-9.]+)", body)
    assert value and float(value.group(1)) == pytest.approx(run.data.metrics["test/acc_int8"], abs=1e-6)


@pytest.mark.parametrize("artifact", ["data/class_distribution.png", "int8/per_class_damage.png"])
def test_artifact_view_previews_the_figures(ui: UiStack, page, artifact: str) -> None:
    _open(page, ui.url(f"/experiments/{ui.experiment_id}/runs/{ui.int8.info.run_id}/artifacts/{artifact}"),
          artifact.split("/")[-1])
    # the preview is the file itself, fetched through the server from S3 and decoded by the browser
    page.wait_for_function("Array.from(document.images).some(i => i.src.startsWith('blob:') && i.naturalWidth > 300)")


def test_compare_view_of_two_children_of_the_sweep(ui: UiStack, page) -> None:
    runs = json.dumps([ui.fp32.info.run_id, ui.int8.info.run_id])
    _open(page, ui.url(f'/compare-runs?runs={runs}&experiments=["{ui.experiment_id}"]'), "Run details")
    body = page.inner_text("body")
    assert ui.fp32.info.run_name in body and ui.int8.info.run_name in body and "quant.mode" in body
    # the metrics table is virtualized grids (names, then one per run) scrolled together: find the row
    for _ in range(30):
        cells = page.evaluate(_METRIC_ROW, "test/acc_int8")
        if cells is not None:
            break
        page.wait_for_timeout(200)
    # FP32 child first: it has no INT8 file; the INT8 child's value as the UI rounds it
    assert cells == [f"NaN | {round(ui.int8.data.metrics['test/acc_int8'], 3)}"]


# The compare view's cells on the row of metric ``name`` (one string per grid, runs joined by " | ");
# null, after scrolling every grid a few rows further, while that row is not rendered yet.
_METRIC_ROW = """name => {
  const grids = Array.from(document.querySelectorAll('.ReactVirtualized__Grid'));
  const label = Array.from(document.querySelectorAll('.ReactVirtualized__Grid a, .ReactVirtualized__Grid div'))
    .find(e => e.textContent.trim() === name && e.children.length <= 1);
  if (!label) { grids.forEach(g => { g.scrollTop += 250; }); return null; }
  const cell = label.closest('[style*="top"]');
  const top = cell.style.top, nameGrid = cell.closest('.ReactVirtualized__Grid');
  const box = nameGrid.getBoundingClientRect();
  return grids.filter(g => g !== nameGrid && Math.abs(g.getBoundingClientRect().top - box.top) < 5)
    .map(g => Array.from(g.querySelectorAll('[style*="top"]')).filter(c => c.style.top === top)
      .map(c => c.textContent.trim()).join(' | '));
}"""


def test_parent_shows_the_summary_table_and_the_pareto_figure(ui: UiStack, page) -> None:
    base = f"/experiments/{ui.experiment_id}/runs/{ui.parent.info.run_id}"
    _open(page, ui.url(f"{base}/artifacts/sweep/summary.json"), "summary.json")
    page.get_by_text("quant=ptq_int8").first.wait_for()
    body = page.inner_text("body")
    assert "quant=fp32" in body and "acc_int8" in body and ui.int8.info.run_id in body
    page.get_by_text("pareto.png", exact=True).first.click()  # in the artifact tree, as a user would
    page.wait_for_function("Array.from(document.images).some(i => i.src.startsWith('blob:') && i.naturalWidth > 300)")


def test_registered_model_shows_its_alias_and_the_deploy_verdict(ui: UiStack, page) -> None:
    _open(page, ui.url(f"/models/{ui.model_name}"), ui.model_name)
    page.get_by_text("production").first.wait_for()
    tags = ui.client.get_model_version(ui.model_name, ui.version).tags
    status = tags["deploy.local.status"]  # written back by the deploy controller
    _open(page, ui.url(f"/models/{ui.model_name}/versions/{ui.version}"), "deploy.local.status")
    assert status in page.inner_text("body")


def test_a_running_job_shows_its_live_summary(ui: UiStack, page, tmp_path: Path) -> None:
    env = _env(ui.server, ui.server.s3)
    job = subprocess.Popen([sys.executable, "-m", "edgeqat", "train", *TINY, "quant=fp32", "trainer.max_epochs=500",
                            "trainer.limit_train_batches=null", "tracking.status_interval_s=0",
                            "tracking.experiment_name=ui-live", f"output_dir={tmp_path}/out"],
                           env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    try:
        live = re.compile(r"Training the FP32 model: epoch \d+ of 500, \d+ % done, about .+ left \(done around .+\)")
        run = _wait_for_note(ui.client, "ui-live", live)
        _open(page, ui.url(f"/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"), "Description")
        page.get_by_text(live).first.wait_for()  # the description at the top of the run's page
        assert "RUNNING" in page.inner_text("body")
    finally:
        os.killpg(job.pid, signal.SIGTERM)
        job.wait(timeout=120)


def _wait_for_note(client: MlflowClient, experiment: str, pattern: re.Pattern, timeout_s: float = 120.0):
    """The run in ``experiment`` once its description matches ``pattern`` (read through the API)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        exp = client.get_experiment_by_name(experiment)
        runs = client.search_runs([exp.experiment_id]) if exp else []
        if runs and pattern.search(runs[0].data.tags.get("mlflow.note.content", "")):
            return runs[0]
        time.sleep(0.5)
    raise AssertionError(f"no run in {experiment!r} said {pattern.pattern!r} within {timeout_s:.0f} s")
