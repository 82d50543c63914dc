#!/usr/bin/env bash
# Seeds fuzz/corpus/<target>/ from the test cases: the string literals of tests/*.rs,
# tests/common/, src/http/*.rs and src/config/*.rs, and the ```toml blocks of README.md.
# Request heads go to request_head and roundtrip, response heads to response_head, chunked
# bodies (literals of src/http/chunked.rs, and the bodies of chunked requests) to chunked
# (each with a split-point prefix, see fuzz_targets/chunked.rs), TOML to config.
# Files are named by their SHA-1, so rerunning adds nothing twice. Needs python3.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 - "$@" <<'EOF'
import glob, hashlib, os, re

def literals(src):
    """Yields the (unescaped) string and byte-string literals of Rust source `src`."""
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            i = src.find("\n", i)
            if i < 0:
                return
            continue
        if c == "'" and i + 2 < n and src[i + 2] == "'":  # '"' and friends
            i += 3
            continue
        m = re.compile(r'b?r(#*)"').match(src, i)
        if m and (i == 0 or not (src[i - 1].isalnum() or src[i - 1] == "_")):
            end = src.find('"' + m.group(1), m.end())
            if end < 0:
                return
            yield src[m.end():end].encode()
            i = end + 1 + len(m.group(1))
            continue
        if c == '"':
            out, j = bytearray(), i + 1
            while j < n and src[j] != '"':
                if src[j] == "\\":
                    e = src[j + 1]
                    j += 2
                    if e == "\n":
                        while j < n and src[j] in " \t\n":
                            j += 1
                    elif e == "x":
                        out.append(int(src[j:j + 2], 16))
                        j += 2
                    elif e == "u":
                        k = src.index("}", j)
                        out += chr(int(src[j + 1:k], 16)).encode()
                        j = k + 1
                    else:
                        out += {"n": b"\n", "r": b"\r", "t": b"\t", "0": b"\0"}.get(e, e.encode())
                else:
                    out += src[j].encode()
                    j += 1
            yield bytes(out)
            i = j + 1
            continue
        i += 1

def put(target, data):
    d = os.path.join("fuzz", "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb") as f:
        f.write(data)

request = re.compile(rb"^(\r?\n)*[A-Z]+ \S+ HTTP/1\.[01]\r?\n")
response = re.compile(rb"^(\r?\n)*HTTP/\d")
chunk = re.compile(rb"^[0-9a-fA-F]+[ \t;\r]")

def chunked(body):
    put("chunked", b"\0" + body)  # no split
    put("chunked", b"\3\1\2\5" + body)  # three splits

MIN = b'[[upstream]]\nname = "a"\npeers = [{ address = "127.0.0.1:8001" }]\n'
PEERS = (b'[[upstream]]\nname = "a"\npeers = [{ address = "127.0.0.1:8001", region = "eu-1" }, '
         b'{ address = "127.0.0.1:8002", region = "us-1" }]\n')

files = sorted(glob.glob("tests/*.rs") + glob.glob("tests/common/*.rs")
               + glob.glob("src/http/*.rs") + glob.glob("src/config/*.rs"))
for path in files:
    for lit in literals(open(path, encoding="utf-8").read()):
        if request.match(lit):
            put("request_head", lit)
            put("roundtrip", lit)
            head, sep, body = lit.partition(b"\r\n\r\n")
            if sep and b"chunked" in head.lower() and body:
                chunked(body)
        elif response.match(lit):
            put("response_head", lit)
        elif path.endswith("chunked.rs") and (chunk.match(lit) or lit in (b"\r\n", b";ext\r\n")):
            chunked(lit)
        elif path.startswith(("src/config", "tests")) and b"=" in lit and (b"[" in lit or b"\n" in lit):
            # Fill in the format! placeholders the config tests use.
            text = lit.replace(b"{MIN}", MIN).replace(b"{PEERS}", PEERS)
            text = text.replace(b"{{", b"{").replace(b"}}", b"}")
            put("config", text)
            if b"[[upstream]]" not in text:
                # A key snippet: also inside the smallest valid config, as the tests load it.
                put("config", b"[server]\nadmin = \"\"\n" + MIN + text)

readme = open("README.md", encoding="utf-8").read()
for block in re.findall(r"```toml\n(.*?)```", readme, re.S):
    put("config", block.encode())
for t in sorted(os.listdir("fuzz/corpus")):
    print(t, len(os.listdir(os.path.join("fuzz/corpus", t))))
EOF
