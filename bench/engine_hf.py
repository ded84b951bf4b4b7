#!/usr/bin/env python3
"""Anchors for `kvtier-bench engine`, measured on the same GPU and weights in the same run.

Times Hugging Face transformers (bf16, attn_implementation="sdpa", the default DynamicCache):
  * prefill of N tokens, batch 1: one forward with logits_to_keep=1 (as generate() does);
  * decode step at batch b with c tokens of context: one forward of one token per sequence
    plus the greedy argmax, synchronized; the cache is cropped back to c after every step so
    each step sees the same context.
Also measures the hardware ceilings the engine is judged against: bf16 GEMM rate (cuBLAS
through torch.matmul, 8192^3, random data) and device memory bandwidth (a large copy,
counting bytes read plus written).
Prints one JSON object on the last stdout line.
"""
import argparse
import json
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, DynamicCache


def cuda_time(fn, warmup, reps):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gemm_peak_tflops():
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    t = cuda_time(lambda: torch.matmul(a, b), 3, 20)
    return 2 * n ** 3 / t / 1e12


def mem_bw_gbps():
    n = 1 << 30  # 2 GiB of bf16 each way
    a = torch.empty(n, device="cuda", dtype=torch.bfloat16).uniform_()
    b = torch.empty_like(a)
    t = cuda_time(lambda: b.copy_(a), 3, 20)
    return 2 * a.numel() * 2 / t / 1e9



def repeat_cache(cache, b):
    if hasattr(cache, "layers"):
        for layer in cache.layers:
            layer.keys = layer.keys.repeat(b, 1, 1, 1)
            layer.values = layer.values.repeat(b, 1, 1, 1)
    else:
        cache.key_cache = [k.repeat(b, 1, 1, 1) for k in cache.key_cache]
        cache.value_cache = [v.repeat(b, 1, 1, 1) for v in cache.value_cache]
    return cache


@torch.no_grad()
def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--prefill", default="1024,4096,8192,16384")
    p.add_argument("--decode", default="1@8192,32@8192,128@2048", help="batch@context,...")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()

    torch.manual_seed(0)
    result = dict(gemm_peak_tflops=gemm_peak_tflops(), mem_bw_gbps=mem_bw_gbps())
    try:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16,
                                                     attn_implementation="sdpa")
    except TypeError:
        model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.bfloat16,
                                                     attn_implementation="sdpa")
    model = model.to("cuda").eval()
    vocab = model.config.vocab_size
    gen = torch.Generator(device="cpu").manual_seed(1)

    def prompt(n, b=1):
        return torch.randint(3, vocab, (b, n), generator=gen).to("cuda")

    prefill = {}
    for n in [int(x) for x in args.prefill.split(",") if x]:
        ids = prompt(n)
        prefill[str(n)] = cuda_time(
            lambda: model(input_ids=ids, use_cache=True, past_key_values=DynamicCache(),
                          logits_to_keep=1), 1, args.reps)
        print(f"hf prefill {n}: {prefill[str(n)]:.4f} s", flush=True)
    result["prefill_s"] = prefill

    decode = {}
    for spec in [s for s in args.decode.split(",") if s]:
        b, c = (int(x) for x in spec.split("@"))
        cache = DynamicCache()
        out = model(input_ids=prompt(c), use_cache=True, past_key_values=cache, logits_to_keep=1)
        cache = repeat_cache(out.past_key_values, b)
        step_ids = prompt(1, b)

        def step():
            o = model(input_ids=step_ids, use_cache=True, past_key_values=cache)
            torch.argmax(o.logits[:, -1], dim=-1).cpu()
            cache.crop(c)

        decode[spec] = cuda_time(step, 2, args.steps)
        print(f"hf decode {spec}: {decode[spec] * 1e3:.2f} ms", flush=True)
        del cache, out
        torch.cuda.empty_cache()
    result["decode_step_s"] = decode
    print(json.dumps(result))


if __name__ == "__main__":
    main()
