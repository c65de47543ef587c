"""The layout of the files under log_dir, and the URL-credential scrub that runs over each."""
from __future__ import annotations

import json

from request_log import RequestLog, redact_url_credentials


def test_a_dry_run_file_holds_one_indicator_per_line(tmp_path):
    """README: a dry-run file is one JSON document, one indicator a line (grep shows a whole
    indicator), written by json's C encoder rather than the pure-Python `indent` one."""
    batch = [{"externalId": f"id-{n}", "tags": ["tlp:amber", "kill-chain:C2"], "description": "line\nbreak ü"} for n in range(3)]
    path = RequestLog(tmp_path / "logs", False, False).write("dry-run-new", batch)
    text = path.read_text(encoding="utf-8")
    assert json.loads(text) == batch
    lines = text.splitlines()
    assert lines[0] == "[" and lines[-1] == "]"
    assert [json.loads(line.removesuffix(",")) for line in lines[1:-1]] == batch


def test_an_error_file_holds_one_field_per_line(tmp_path):
    record = {"context": "upload", "error": "2 of 100 indicators rejected", "rejected": [{"key": "k", "reason": "bad"}]}
    path = RequestLog(tmp_path / "logs", False, False).write("error", record)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert json.loads("\n".join(lines)) == record
    assert lines[1:-1] == ['"context": "upload",', '"error": "2 of 100 indicators rejected",',
                           '"rejected": [{"key": "k", "reason": "bad"}]']


def test_url_credentials_are_redacted_wherever_they_sit_in_a_long_text():
    """The scrub first looks for `://…@` alone (cheap); every form the full pattern catches
    must still be caught behind that first look."""
    filler = " ".join(f"word{n} https://host{n}.example/path?q=a@b" for n in range(500))
    for url, shown in (("https://user:secret@host/x", "https://[redacted]@host/x"),
                       ("HTTPS://User:Secret@host", "HTTPS://[redacted]@host"),
                       ("ftp://u:p@ss@host/", "ftp://[redacted]@host/"),
                       ('"url": "svn+ssh://me@host"', '"url": "svn+ssh://[redacted]@host"')):
        assert redact_url_credentials(f"{filler} {url} {filler}") == f"{filler} {shown} {filler}"
