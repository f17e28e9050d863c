"""Failures reach a person: an automation (failed or crashed flow run -> webhook notification block), created as
docs/deployments.md shows, against a real `prefect server`; a real GIAB run fails; a local HTTP receiver must
get a notification naming the run and saying why."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


class Receiver:
    """A webhook endpoint on 127.0.0.1 that keeps every POST body it gets."""

    def __init__(self) -> None:
        self.bodies: list[str] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                received.append(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def __enter__(self) -> Receiver:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_failed_run_notifies_a_webhook_naming_the_run(prefect_server, tmp_path):
    from prefect.automations import Automation
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.settings import PREFECT_API_URL, temporary_settings

    sample = "NA99999_Lib1"  # not a GIAB sample and no custom truth: the flow fails with a clear message
    with Receiver() as rx, temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        block = CustomWebhookNotificationBlock(name="lab-alerts", url=rx.url, json_data={"text": "{{subject}}: {{body}}"})
        block_id = block.save("lab-alerts", overwrite=True)
        automation = Automation(
            name="genoflows: failed or crashed runs",
            trigger=EventTrigger(expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
                                 match={"prefect.resource.id": "prefect.flow-run.*"},
                                 posture=Posture.Reactive, threshold=1),
            actions=[SendNotification(block_document_id=block_id,
                                      subject="genoflows run {{ flow_run.name }} {{ flow_run.state.name }}",
                                      body="{{ flow.name }} / {{ flow_run.name }}: {{ flow_run.state.message }}")],
        ).create()
        try:
            time.sleep(3)  # the triggers service loads new automations periodically
            failing = subprocess.run(
                [sys.executable, "-c", "from flows.giab_benchmark import giab_benchmark\n"
                 f"giab_benchmark(sample_id={sample!r}, source={str(tmp_path)!r}, out_dir={str(tmp_path / 'out')!r})"],
                cwd=ROOT, env=prefect_server.env(GENOFLOWS_DATA_DIR=str(tmp_path / "data")),
                capture_output=True, text=True, timeout=300)
            assert failing.returncode != 0 and "NA99999" in failing.stderr, failing.stderr[-2000:]
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not any(sample in b for b in rx.bodies):
                time.sleep(1)
        finally:
            automation.delete()
    hits = [json.loads(b)["text"] for b in rx.bodies if sample in b]
    assert hits, f"no notification naming {sample}; got {rx.bodies}\n{prefect_server.log.read_text()[-3000:]}"
    assert f"genoflows run {sample} Failed" in hits[0] and "giab_benchmark" in hits[0]
    assert "NA99999" in hits[0].split(":", 1)[1]  # the state message says what failed
