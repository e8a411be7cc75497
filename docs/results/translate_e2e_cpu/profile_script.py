"""Profile ours greedy/beam on Multi30k val: wall time of full pass (2 threads) + torch.profiler top ops."""
import sys, time, json
import torch
sys.path.insert(0, "/work/main/benchmarks")
from seq2seq.inference.checkpoint import load_model
from seq2seq.inference.predictor import Predictor
from seq2seq.decoding.search import DecodingConfig
torch.set_num_threads(2)
strategy = sys.argv[1] if len(sys.argv) > 1 else "greedy"
bs = int(sys.argv[2]) if len(sys.argv) > 2 else 16
prof = len(sys.argv) > 3 and sys.argv[3] == "prof"
net, tok = load_model("/work/runs/m30k_1071/checkpoints/best.ckpt", "cpu")
if "--packed" in sys.argv:
    from seq2seq.inference.quantize import pack_linear_layers; pack_linear_layers(net, torch.device("cpu"))
lines = open("/work/shared/data/multi30k/val.en").read().splitlines()
dec = DecodingConfig(strategy=strategy, beam_size=5) if strategy == "beam" else DecodingConfig(strategy="greedy")
p = Predictor(net, tok, dec)
p.translate(lines[:32], batch_size=bs)
times = []
for r in range(3):
    t = time.perf_counter(); out = p.translate(lines, batch_size=bs); times.append(time.perf_counter() - t)
print(json.dumps({"strategy": strategy, "bs": bs, "seconds": [round(x, 3) for x in times], "sent_s": round(len(lines) / sorted(times)[1], 1)}))
if prof:
    from torch.profiler import profile, ProfilerActivity
    with profile(activities=[ProfilerActivity.CPU]) as pr:
        p.translate(lines, batch_size=bs)
    print(pr.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
