import os, sys, torch, torch.distributed as dist
rank = int(os.environ["RANK"]); world = int(os.environ["WORLD_SIZE"])
torch.cuda.set_device(rank); dev = torch.device("cuda", rank)
dist.init_process_group("nccl", device_id=dev)
def timeit(fn, n=30):
    for _ in range(5): fn()
    torch.cuda.synchronize(); dist.barrier()
    s, e = torch.cuda.Event(True), torch.cuda.Event(True)
    s.record()
    for _ in range(n): fn()
    e.record(); e.synchronize()
    return s.elapsed_time(e) / n * 1e3
for mb in [0.01, 1, 10, 20, 54]:
    n = int(mb * 2**20 / 4) // world * world
    x = torch.ones(n, device=dev); y = torch.empty_like(x)
    half = [n // world] * world
    us = timeit(lambda: dist.all_to_all_single(y, x))
    splits = [0 if p == rank else n // world for p in range(world)]
    x2, y2 = x[: n // world * (world - 1)], y[: n // world * (world - 1)]
    us2 = timeit(lambda: dist.all_to_all_single(y2, x2, splits, splits))
    # captured
    g = torch.cuda.CUDAGraph(); st = torch.cuda.Stream()
    st.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(st):
        for _ in range(3): dist.all_to_all_single(y, x)
    torch.cuda.current_stream().wait_stream(st)
    with torch.cuda.graph(g):
        dist.all_to_all_single(y, x)
    us3 = timeit(g.replay)
    sent = n * 4 * (world - 1) / world
    if rank == 0:
        print(f"{mb:6} MB/rank: eager {us:8.1f} us ({sent/us/1e3:6.1f} GB/s), own block skipped {us2:8.1f} us, graph {us3:8.1f} us ({sent/us3/1e3:6.1f} GB/s)", flush=True)
os._exit(0)
