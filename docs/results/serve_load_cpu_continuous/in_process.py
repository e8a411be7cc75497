import sys, time, torch, threading
from seq2seq.serving.app import use_one_malloc_arena
use_one_malloc_arena()
from seq2seq.api import Translator, chunks
from seq2seq.decoding.search import DecodingConfig
from seq2seq.decoding.continuous import ContinuousSearch
T = int(sys.argv[1])
tr = Translator.from_checkpoint("/tmp/art/m30k_500/checkpoints/best.ckpt", device="cpu", decoding=DecodingConfig(strategy="beam", beam_size=5), batch_size=16)
lines = [l.strip() for l in open("/work/shared/data/multi30k/val.en")][:480]
pred = tr.predictor(); ids = pred.source_ids(lines)
def cont(join_min=4):
    s = ContinuousSearch(pred.net, pred.decoding, pred.device); nxt = 0; done = 0; steps = 0
    while done < len(ids):
        free = 16 - s.size
        if nxt < len(ids) and free >= min(join_min, len(ids) - nxt) or s.size == 0:
            n = min(free, len(ids) - nxt); s.add(ids[nxt:nxt + n], list(range(nxt, nxt + n)), 1); nxt += n
        done += len(s.step()); steps += 1
    return steps
def chunked():
    for c in chunks(lines, 16): tr.translate(c, warn=None)
def work(out):
    torch.set_num_threads(T)
    cont(); chunked()
    for rep in range(2):
        for name, fn in (("continuous", cont), ("input-order chunks of 16", chunked), ("sorted", lambda: tr.translate(lines, warn=None))):
            t = time.perf_counter(); fn(); out.append(f"{name}: {len(lines)/(time.perf_counter()-t):.1f} sent/s")
out = []; th = threading.Thread(target=work, args=(out,)); th.start(); th.join(); print(T, "threads, worker thread:", "; ".join(out))
