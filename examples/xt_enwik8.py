"""An x-transformers enwik8-style training script, ported to arlm by changing one import.

The model, the wrapper, the training loop and the sampling calls are what an x-transformers user
writes (x-transformers' own enwik8 example configuration: dim 512, depth 6, 8 heads, polar
position embeddings, pre-and-post norm). Only the import line differs:

    from x_transformers import TransformerWrapper, Decoder, AutoregressiveWrapper   # before
    from arlm import TransformerWrapper, Decoder, AutoregressiveWrapper             # after

Run:  python examples/xt_enwik8.py [TEXT_FILE]   (default: ../shared/data/tinyshakespeare.txt if
present, else arlm's built-in corpus). Sizes can be shrunk through environment variables
(XT_DIM, XT_DEPTH, XT_SEQ_LEN, XT_BATCHES, ...) so the tests run the same script in seconds.
"""

import gzip
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from arlm import AutoregressiveWrapper, Decoder, TransformerWrapper

env = lambda name, default: type(default)(os.environ.get(name, default))  # noqa: E731

NUM_BATCHES = env("XT_BATCHES", 100)
BATCH_SIZE = env("XT_BATCH_SIZE", 4)
GRADIENT_ACCUMULATE_EVERY = env("XT_ACCUMULATE", 4)
LEARNING_RATE = env("XT_LR", 1e-4)
VALIDATE_EVERY = env("XT_VALIDATE_EVERY", 50)
GENERATE_EVERY = env("XT_GENERATE_EVERY", 100)
GENERATE_LENGTH = env("XT_GENERATE_LENGTH", 256)
SEQ_LEN = env("XT_SEQ_LEN", 1024)

torch.manual_seed(env("XT_SEED", 0))
random.seed(env("XT_SEED", 0))

model = TransformerWrapper(
    num_tokens=256,
    max_seq_len=SEQ_LEN,
    attn_layers=Decoder(
        dim=env("XT_DIM", 512),
        depth=env("XT_DEPTH", 6),
        heads=env("XT_HEADS", 8),
        rotary_pos_emb=False,
        polar_pos_emb=True,
        pre_and_post_norm=True,
    ),
)
model = AutoregressiveWrapper(model)


def read_bytes(path):
    if path is None:
        shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
        if shared.is_file():
            path = shared
        else:
            from arlm.data import load_corpus

            return np.frombuffer(load_corpus(None), dtype=np.uint8).copy()
    raw = Path(path).read_bytes()
    if str(path).endswith(".gz"):
        raw = gzip.decompress(raw)
    return np.frombuffer(raw, dtype=np.uint8).copy()


data = read_bytes(sys.argv[1] if len(sys.argv) > 1 else None)
split = int(len(data) * 0.9)
data_train, data_val = torch.from_numpy(data[:split]), torch.from_numpy(data[split:])


class TextSamplerDataset(Dataset):
    def __init__(self, data, seq_len):
        self.data, self.seq_len = data, seq_len

    def __getitem__(self, index):
        start = random.randint(0, self.data.size(0) - self.seq_len - 1)
        return self.data[start: start + self.seq_len + 1].long()

    def __len__(self):
        return self.data.size(0) // self.seq_len


def cycle(loader):
    while True:
        yield from loader


train_loader = cycle(DataLoader(TextSamplerDataset(data_train, SEQ_LEN), batch_size=BATCH_SIZE, drop_last=True))
val_loader = cycle(DataLoader(TextSamplerDataset(data_val, SEQ_LEN), batch_size=BATCH_SIZE, drop_last=True))
optim = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)

for i in range(NUM_BATCHES):
    model.train()
    for _ in range(GRADIENT_ACCUMULATE_EVERY):
        loss = model(next(train_loader))
        (loss / GRADIENT_ACCUMULATE_EVERY).backward()
    print(f"training loss: {loss.item()}")
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
    optim.step()
    optim.zero_grad()

    if i % VALIDATE_EVERY == 0:
        model.eval()
        with torch.no_grad():
            print(f"validation loss: {model(next(val_loader)).item()}")

    if i % GENERATE_EVERY == 0 or i == NUM_BATCHES - 1:
        model.eval()
        inp = random.choice(TextSamplerDataset(data_val, SEQ_LEN))[:-1]
        prime = bytes(inp.tolist()).decode("utf-8", errors="replace")
        print(prime, "\n", "*" * 100)
        sample = model.generate(inp[None, :], GENERATE_LENGTH, cache_kv=True)
        print("sample:", bytes(sample[0].tolist()).decode("utf-8", errors="replace"))
