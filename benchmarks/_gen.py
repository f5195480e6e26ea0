"""Print N deterministic lines of ~80 characters as fast as possible (the chatty agent)."""
import sys

n = int(sys.argv[1])
tag = sys.argv[2] if len(sys.argv) > 2 else "agent"
out = sys.stdout.buffer
chunk = []
for i in range(n):
    chunk.append(f"{tag} line {i:07d} ".ljust(79, "x").encode() + b"\n")
    if len(chunk) == 512:
        out.write(b"".join(chunk))
        chunk.clear()
out.write(b"".join(chunk))
