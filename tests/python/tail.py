"""Reads weir's console tail (Server-Sent Events) with `requests` streaming, as a script
or a notebook would: prints "subscribed" once the stream is open, then, after two
events (or 20 s), one JSON line with their ids and the distinct session_id values seen.

usage: tail.py URL
"""
import json
import sys
import time

import requests

url = sys.argv[1]
ids, sessions = [], set()
with requests.get(url, stream=True, timeout=(5, 20), headers={"accept": "text/event-stream"}) as r:
    r.raise_for_status()
    assert r.headers["content-type"] == "text/event-stream", r.headers
    print("subscribed", flush=True)
    deadline = time.time() + 20
    kind, data = "message", []
    for line in r.iter_lines(decode_unicode=True):
        if time.time() > deadline:
            break
        if line == "":
            if data and kind == "message":
                ev = json.loads("\n".join(data))
                ids.append(ev["id"])
                sessions.add(ev["fields"].get("session_id"))
                if len(ids) == 2:
                    break
            kind, data = "message", []
        elif line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
print(json.dumps({"ids": ids, "session_ids": sorted(s for s in sessions if s is not None)}))
