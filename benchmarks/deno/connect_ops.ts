// Driven by benchmarks/connect_bench.py: Deno KV operations per second on the
// database named by argv[0] (an http:// KV Connect URL, or a file path for
// Deno's own SQLite store). Prints one JSON object {workload: ops_per_second}.
const [target, nArg] = Deno.args;
const n = Number(nArg ?? 500);
const kv = await Deno.openKv(target);
const prefix = `bench-${crypto.randomUUID()}`;
const results: Record<string, number> = {};

async function time(name: string, ops: number, fn: () => Promise<void>) {
  const t0 = performance.now();
  await fn();
  results[name] = ops / ((performance.now() - t0) / 1000);
}

await time("set", n, async () => {
  for (let i = 0; i < n; i++) await kv.set([prefix, "u", i], { name: `user ${i}`, n: i });
});
await time("get", n, async () => {
  for (let i = 0; i < n; i++) {
    if ((await kv.get([prefix, "u", (i * 7919) % n])).value === null) throw new Error("miss");
  }
});
await time("get_many_10", n, async () => {
  for (let i = 0; i < n; i++) {
    await kv.getMany(Array.from({ length: 10 }, (_, j) => [prefix, "u", (i + j) % n]));
  }
});
await time("atomic_check_set", n, async () => {
  for (let i = 0; i < n; i++) {
    const e = await kv.get([prefix, "u", i]);
    const r = await kv.atomic().check(e).set([prefix, "u", i], { name: "x", n: i + 1 }).commit();
    if (!r.ok) throw new Error("conflict");
  }
});
await time("sum", n, async () => {
  for (let i = 0; i < n; i++) await kv.atomic().sum([prefix, "counter"], 1n).commit();
});
const pages = Math.max(1, Math.floor(n / 10));
await time("list_page_20", pages, async () => {
  for (let i = 0; i < pages; i++) {
    let count = 0;
    for await (const _ of kv.list({ prefix: [prefix, "u"] }, { limit: 20 })) count++;
    if (count !== Math.min(20, n)) throw new Error("short page");
  }
});
kv.close();
console.log(JSON.stringify(results));
