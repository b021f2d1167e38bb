"""Forward+backward time and peak memory of the losses, at the `smoke` and `paper` shapes.

Usage (from the repository root): `python bench/losses.py [--shapes smoke paper] [--devices cpu cuda]
[--repeats 3] [--threads 1]`; writes bench/results/losses.json (one record per loss, shape and device).

Method, written into the JSON too:
- every case runs in a fresh Python subprocess, so that one case's allocations cannot hide another's peak;
- time: forward + backward of the scalar loss, `repeats` times (the loop baseline at the paper shape once);
  we report the median wall time and the median CPU time of the process (CPU: `time.process_time`, which a
  busy shared machine does not inflate, unlike wall time); on CUDA, wall time between synchronisations;
- peak memory, CPU: growth of the process's peak resident set (`ru_maxrss`) from just after the inputs are
  built to the end, with glibc's `MALLOC_MMAP_THRESHOLD_` fixed at 128 kB so that freed large tensors go back
  to the system and the resident set follows the live tensors (the gradients of the inputs are included);
  CUDA: `torch.cuda.max_memory_allocated` above the memory held after building the inputs;
- the speed-up of GLoRIA's local losses is the loop's median time over theirs: CPU time with one thread, wall time
  with several threads or on CUDA (`speedup_of` names which).
"""
from __future__ import annotations
import argparse, json, os, platform, resource, statistics, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {  # B pairs, R regions, T max tokens (lengths vary), D embedding, D_y encoder feature width (ELVIS targets)
    'smoke': dict(B=8, R=16, T=32, D=32, D_y=32, mean_len=20, sd_len=6),
    'paper': dict(B=48, R=19 * 19, T=97, D=768, D_y=1024, mean_len=50, sd_len=12),
}
LOSSES = ['infonce', 'gloria_global', 'gloria_local', 'gloria_local_autograd', 'gloria_local_loop', 'elvis_local',
          'elvis_local_onehot']
BLOCKED = ('gloria_local', 'gloria_local_autograd')   # GLoRIA local losses that take a captions-per-block size


def inputs(shape: dict, device: str):
    "Seeded random inputs; caption lengths from a normal clipped to [3, T], as real report lengths vary."
    import torch
    g = torch.Generator().manual_seed(0)
    B, R, T, D = shape['B'], shape['R'], shape['T'], shape['D']
    lens = (torch.randn(B, generator=g) * shape['sd_len'] + shape['mean_len']).round().clamp(3, T).long()
    x = dict(img=torch.randn(B, D, generator=g), txt=torch.randn(B, D, generator=g),
             words=torch.randn(B, T, D, generator=g), regions=torch.randn(B, R, D, generator=g) / 4,
             mask=torch.arange(T)[None] < lens[:, None],
             feats_img=torch.randn(B, R, shape['D_y'], generator=g), feats_txt=torch.randn(B, T, 768 if shape['D_y'] > 32 else 32, generator=g),
             att_img=torch.randn(B, R, D, generator=g), att_txt=torch.randn(B, T, D, generator=g))
    x = {k: v.to(device) for k, v in x.items()}
    for k in ('img', 'txt', 'words', 'regions', 'att_img', 'att_txt'): x[k].requires_grad_()
    return x, lens


def loss_fn(name: str, chunk_size: int = 2):
    "A function of the inputs dict returning the scalar loss."
    from elvis_nb.losses import infonce as I, gloria as G
    if name == 'infonce': return lambda x: I.infonce(x['img'], x['txt'])
    if name == 'gloria_global': return lambda x: G.gloria_global_loss(x['img'], x['txt'])
    if name == 'gloria_local': return lambda x: G.gloria_local_loss(x['words'], x['mask'], x['regions'], chunk_size=chunk_size)
    if name == 'gloria_local_autograd':   # the chapter's plain version: autograd over blocks of captions
        return lambda x: sum(I.bidirectional_ce(10.0 * G.gloria_local_similarity_autograd(
            x['words'], x['mask'], x['regions'], captions_per_block=chunk_size)))
    if name == 'gloria_local_loop': return lambda x: G.gloria_local_loss_loop(x['words'], x['mask'], x['regions'])
    from elvis_nb.losses import elvis as E   # the ELVIS local loss (losses-B), on given cross-attended embeddings
    cfg = E.ElvisLocalConfig(target='onehot' if name.endswith('onehot') else 'intra_modal')
    return lambda x: E.elvis_local_loss(x['feats_img'], x['regions'][..., :x['att_img'].shape[-1]], x['att_img'],
                                        x['feats_txt'], x['words'], x['att_txt'], x['mask'], cfg).loss


def run_case(name: str, shape_name: str, device: str, repeats: int, chunk_size: int = 2) -> dict:
    "Time and measure one case in this process (called in a fresh subprocess)."
    import torch
    x, lens = inputs(SHAPES[shape_name], device)
    fn = loss_fn(name, chunk_size)
    sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
    if device == 'cuda': torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    wall, cpu = [], []
    for _ in range(repeats):
        for v in x.values(): v.grad = None
        sync(); t0, c0 = time.perf_counter(), time.process_time()
        loss = fn(x); loss.backward(); sync()
        wall.append(time.perf_counter() - t0); cpu.append(time.process_time() - c0)
    peak = ((torch.cuda.max_memory_allocated() - base) / 2**20 if device == 'cuda'
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024)
    return dict(loss=name, shape=shape_name, device=device, repeats=repeats, value=float(loss),
                median_ms=round(1e3 * statistics.median(wall), 2), median_cpu_ms=round(1e3 * statistics.median(cpu), 2),
                peak_mb=round(peak, 1), sum_lengths=int(lens.sum()), threads=torch.get_num_threads(),
                **({'chunk_size': chunk_size} if name in BLOCKED else {}))


def main(shapes, devices, repeats, threads, chunk_sizes=(2,), losses=None) -> dict:
    import torch
    env = {**os.environ, 'MALLOC_MMAP_THRESHOLD_': '131072', 'OMP_NUM_THREADS': str(threads), 'MKL_NUM_THREADS': str(threads)}
    try: import elvis_nb.losses.elvis  # noqa: F401  (the ELVIS losses exist once losses-B has landed)
    except ImportError: available = LOSSES[:5]
    else: available = LOSSES
    cases = [(n, c) for n in (losses or available) for c in (chunk_sizes if n in BLOCKED else (2,))]
    records = []
    for device in devices:
        for shape in shapes:
            for name, chunk in cases:
                reps = 1 if (name == 'gloria_local_loop' and shape == 'paper' and device == 'cpu') else repeats
                cmd = [sys.executable, __file__, '--case', name, shape, device, str(reps), str(threads), str(chunk)]
                out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
                if out.returncode: raise RuntimeError(f"case {name}/{shape}/{device}/chunk {chunk} failed:\n{out.stderr[-3000:]}")
                records.append(json.loads(out.stdout.strip().splitlines()[-1])); print(records[-1], flush=True)
    for r in records:   # speed-up and memory ratio of the blocked local losses over the official loop
        base = next((b for b in records if r['loss'] in BLOCKED and b['loss'] == 'gloria_local_loop'
                     and b['shape'] == r['shape'] and b['device'] == r['device']), None)
        if base:
            key = 'median_cpu_ms' if r['device'] == 'cpu' and threads == 1 else 'median_ms'   # several threads: wall time
            r['baseline'] = base['loss']; r['speedup'] = round(base[key] / r[key], 2); r['speedup_of'] = key
            r['peak_fraction_of_baseline'] = round(r['peak_mb'] / base['peak_mb'], 3) if base['peak_mb'] > 0 else None
    return dict(method=__doc__.split('Method, written into the JSON too:')[1].strip(), shapes=SHAPES,
                torch=torch.__version__, python=platform.python_version(), cpu_count=os.cpu_count(),
                gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None, threads=threads,
                load_average_before=os.getloadavg(), records=records)


if __name__ == '__main__':
    if len(sys.argv) > 1 and sys.argv[1] == '--case':
        import torch
        name, shape, device, reps, threads, chunk = sys.argv[2:8]
        torch.set_num_threads(int(threads))
        print(json.dumps(run_case(name, shape, device, int(reps), int(chunk))))
        sys.exit()
    import torch
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--shapes', nargs='+', default=['smoke', 'paper'], choices=list(SHAPES))
    ap.add_argument('--devices', nargs='+', default=['cpu'] + (['cuda'] if torch.cuda.is_available() else []))
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--threads', type=int, default=1, help='CPU threads per case (1: numbers per core, robust to load)')
    ap.add_argument('--chunk-sizes', type=int, nargs='+', default=[2], help="gloria_local's captions per block")
    ap.add_argument('--losses', nargs='+', choices=LOSSES, help='a subset (default: all available)')
    ap.add_argument('--out', default='losses.json', help='file name under bench/results/')
    a = ap.parse_args()
    res = main(a.shapes, a.devices, a.repeats, a.threads, a.chunk_sizes, a.losses)
    res['load_average_after'] = os.getloadavg()
    path = ROOT / 'bench' / 'results' / a.out
    path.write_text(json.dumps(res, indent=1)); print('wrote', path)
