"""pyloop.py DIR: a python3 loop.

State: a counter, a dict with one entry per step (key "k<i % 1000>" -> i,
so each value's key follows from the value), a list of squares and a running
checksum of every value seen. Every millisecond the counter goes up; every 32
steps DIR/count is rewritten. SIGTERM's handler only sets a flag; then the
state is checked and DIR/verdict written ("PASS count=N" or "FAIL: reason").
STASIS_TEST_CORRUPT=1 changes one dict value before the checks.
"""

import os
import signal
import sys
import time

d = sys.argv[1]


def write(name, text):
    tmp = os.path.join(d, f".{name}.tmp.{os.urandom(8).hex()}")
    with open(tmp, "w") as f:
        f.write(text + "\n")
    os.rename(tmp, os.path.join(d, name))


term = False


def on_term(signum, frame):
    global term
    term = True


signal.signal(signal.SIGTERM, on_term)

count = 0
table = {}
squares = []
checksum = 0


def step():
    global count, checksum
    count += 1
    table[f"k{count % 1000}"] = count
    squares.append(count * count)
    checksum = (checksum * 31 + count) % (1 << 61)


for _ in range(100):
    step()
at_ready = count
write("count", str(count))
write("ready", str(at_ready))

while not term:
    step()
    if count % 32 == 0:
        write("count", str(count))
    time.sleep(0.001)

if os.environ.get("STASIS_TEST_CORRUPT", "0") not in ("", "0"):
    table["k1"] += 1000


def verify():
    if count <= at_ready:
        return f"counter {count} did not go past its value at ready, {at_ready}"
    if len(squares) != count:
        return f"{len(squares)} squares for a counter of {count}"
    for i, sq in enumerate(squares, 1):
        if sq != i * i:
            return f"squares[{i - 1}] is {sq}, expected {i * i}"
    if len(table) != min(count, 1000):
        return f"dict has {len(table)} keys, expected {min(count, 1000)}"
    for key, value in table.items():
        if key != f"k{value % 1000}" or value > count or value <= count - 1000:
            return f"dict entry {key} -> {value} does not fit a counter of {count}"
    c = 0
    for i in range(1, count + 1):
        c = (c * 31 + i) % (1 << 61)
    if c != checksum:
        return f"running checksum {checksum:#x}, recomputed {c:#x}"
    return None


failure = verify()
if failure:
    write("verdict", f"FAIL: {failure}")
    sys.exit(1)
write("verdict", f"PASS count={count}")
sys.exit(0)
