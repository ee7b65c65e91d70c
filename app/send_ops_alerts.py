"""Sample operations alert job: evaluates latest.json and mails through mailx.

Mirrors the production script's contract so the image's mail path can be
tested end to end: mail counts as ready only once an msmtp configuration
exists ($OPS_ALERT_MSMTP_CONFIG, else ~/.msmtprc, /etc/msmtprc,
/etc/msmtp/msmtprc) and mailx/mail is on PATH; without a relay the evaluation
still runs and succeeds.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def msmtp_config() -> Path | None:
    explicit = os.environ.get("OPS_ALERT_MSMTP_CONFIG")
    candidates = [Path(explicit)] if explicit else [
        Path.home() / ".msmtprc", Path("/etc/msmtprc"), Path("/etc/msmtp/msmtprc")
    ]
    return next((p for p in candidates if p.is_file()), None)


def transport() -> dict[str, object]:
    mailx = os.environ.get("OPS_ALERT_MAILX") or shutil.which("mailx") or shutil.which("mail")
    config = msmtp_config()
    return {
        "mode": os.environ.get("OPS_ALERT_TRANSPORT", "auto"),
        "mailx": mailx,
        "msmtp_config": str(config) if config else None,
        "ready": bool(mailx and config),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--snapshot", type=Path)
    parser.add_argument("--state", type=Path)
    parser.add_argument("--log", type=Path)
    parser.add_argument("--check-transport", action="store_true")
    args = parser.parse_args()
    info = transport()
    if args.check_transport:
        print(json.dumps(info))
        return 0
    alerts = []
    if args.snapshot and args.snapshot.is_file():
        alerts = json.loads(args.snapshot.read_text()).get("alerts", [])
    record = {"at": int(time.time()), "alerts": len(alerts), "ready": info["ready"], "sent": 0}
    # The deployment's names (the production script reads these from the env file).
    recipients = os.environ.get("OPS_ALERT_RECIPIENTS", "").replace(",", " ").split()
    sender = os.environ.get("OPS_ALERT_FROM")
    if alerts and info["ready"] and recipients:
        body = "\n".join(str(a) for a in alerts)
        sender_args = ["-r", sender] if sender else []
        subprocess.run([str(info["mailx"]), *sender_args, "-s", f"Aurora: {len(alerts)} alert(s)",
                        *recipients], input=body.encode(), check=True)
        record["sent"] = len(alerts)
    if args.log:
        args.log.parent.mkdir(parents=True, exist_ok=True)
        with args.log.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
    if args.state:
        args.state.parent.mkdir(parents=True, exist_ok=True)
        args.state.write_text(json.dumps(record))
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
