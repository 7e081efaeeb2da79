"""A python3 workload with large heap blocks: lists grown by append (realloc),
a dict, a sort, big bytes and bytearrays, and two threads hashing large
buffers at once. Prints one line that depends on every byte it computed."""
import hashlib
import sys
from concurrent.futures import ThreadPoolExecutor

n = int(sys.argv[1]) if len(sys.argv) > 1 else 300000
xs = []
x = 12345
for _ in range(n):
    x = (x * 1103515245 + 12345) & 0x7FFFFFFF
    xs.append(x)
d = {v: i for i, v in enumerate(xs[: n // 2])}
ys = sorted(xs)
ba = bytearray(4 * n)
for i in range(0, len(ba), 4099):
    ba[i] = i & 255
text = ",".join(map(str, ys[::7])).encode()
packed = b"".join(v.to_bytes(4, "little") for v in ys)
with ThreadPoolExecutor(max_workers=2) as pool:
    digests = list(pool.map(lambda b: hashlib.sha256(b).hexdigest(), [text, bytes(ba), packed]))
print(n, len(d), ys[0], ys[-1], *digests)
