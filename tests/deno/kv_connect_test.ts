// Deno's own KV unit tests (deno tests/unit/kv_test.ts), the cases that apply to a
// remote database, ported to run against `kvmodel serve` over KV Connect.
// Run by tests/test_connect_deno.py: deno test -A --unstable-kv with KV_URL and
// DENO_KV_ACCESS_TOKEN set. Each test works under its own key prefix, since all
// share one served store. No imports, so the run needs no network.

const URL_ = Deno.env.get("KV_URL")!;

function assert(cond: unknown, msg = "assertion failed"): asserts cond {
  if (!cond) throw new Error(msg);
}
function eq(actual: unknown, expected: unknown, msg = "") {
  const a = Deno.inspect(actual, { depth: 10, sorted: true });
  const e = Deno.inspect(expected, { depth: 10, sorted: true });
  if (a !== e) throw new Error(`${msg} expected ${e}, got ${a}`);
}
async function rejects(fn: () => Promise<unknown>, what: string) {
  try {
    await fn();
  } catch {
    return;
  }
  throw new Error(`${what} did not throw`);
}

let counter = 0;
function dbTest(name: string, fn: (kv: Deno.Kv, p: string) => Promise<void>) {
  Deno.test({
    name,
    sanitizeResources: false,
    sanitizeOps: false,
    async fn() {
      const kv = await Deno.openKv(URL_);
      try {
        await fn(kv, `t${++counter}-${crypto.randomUUID()}`);
      } finally {
        kv.close();
      }
    },
  });
}

dbTest("basic read-write-delete and versionstamps", async (kv, p) => {
  const empty = await kv.get([p, "a"]);
  eq(empty.value, null);
  eq(empty.versionstamp, null);
  const r1 = await kv.set([p, "a"], "b");
  assert(r1.ok);
  assert(/^[0-9a-f]{20}$/.test(r1.versionstamp));
  const got = await kv.get([p, "a"]);
  eq(got.key, [p, "a"]);
  eq(got.value, "b");
  eq(got.versionstamp, r1.versionstamp);
  const r2 = await kv.set([p, "a"], "c");
  assert(r2.versionstamp > r1.versionstamp, "versionstamps increase");
  eq((await kv.get([p, "a"])).value, "c");
  await kv.delete([p, "a"]);
  eq((await kv.get([p, "a"])).versionstamp, null);
});

dbTest("set and get every value type (V8 values pass through unchanged)", async (kv, p) => {
  const values: unknown[] = [
    null, undefined, true, false, 0, -1, 1.5, NaN, Infinity, 10n ** 30n, "hello", "",
    new Uint8Array([1, 2, 3]), new Uint8Array(), [1, "a", [2]], { a: 1, b: { c: [true] } },
    new Date(1700000000000), new Map([["k", 1]]), new Set([1, 2]), /re/g,
    new Deno.KvU64(42n),
  ];
  for (const [i, v] of values.entries()) {
    await kv.set([p, i], v);
    eq((await kv.get([p, i])).value, v, `value ${i}`);
  }
});

dbTest("key parts of every type, listed in Deno's order", async (kv, p) => {
  const parts: Deno.KvKeyPart[] = [true, false, 1.5, -1.5, 3n, -3n, "b", "a", new Uint8Array([2])];
  for (const part of parts) await kv.set([p, part], 1);
  const listed = [];
  for await (const e of kv.list({ prefix: [p] })) listed.push(e.key[1]);
  eq(listed, [new Uint8Array([2]), "a", "b", -3n, 3n, -1.5, 1.5, false, true]);
});

dbTest("getMany", async (kv, p) => {
  await kv.set([p, "a"], 1);
  await kv.set([p, "b"], 2);
  const got = await kv.getMany([[p, "a"], [p, "missing"], [p, "b"]]);
  eq(got.map((e) => e.value), [1, null, 2]);
});

dbTest("atomic check: passes on the current versionstamp, fails after a write", async (kv, p) => {
  const r = await kv.set([p, "a"], 1);
  const ok = await kv.atomic().check({ key: [p, "a"], versionstamp: r.versionstamp })
    .set([p, "a"], 2).set([p, "b"], 2).commit();
  assert(ok.ok);
  const stale = await kv.atomic().check({ key: [p, "a"], versionstamp: r.versionstamp })
    .set([p, "a"], 3).commit();
  eq(stale.ok, false);
  eq((await kv.get([p, "a"])).value, 2);
});

dbTest("atomic check with a null versionstamp: the key must be absent", async (kv, p) => {
  const first = await kv.atomic().check({ key: [p, "u"], versionstamp: null })
    .set([p, "u"], "x").commit();
  assert(first.ok);
  const second = await kv.atomic().check({ key: [p, "u"], versionstamp: null })
    .set([p, "u"], "y").commit();
  eq(second.ok, false);
  eq((await kv.get([p, "u"])).value, "x");
});

dbTest("atomic mutations commit together with one versionstamp", async (kv, p) => {
  await kv.set([p, "gone"], 1);
  const r = await kv.atomic().set([p, "a"], 1).set([p, "b"], 2).delete([p, "gone"]).commit();
  assert(r.ok);
  const [a, b, gone] = await kv.getMany([[p, "a"], [p, "b"], [p, "gone"]]);
  eq(a.versionstamp, r.versionstamp);
  eq(b.versionstamp, r.versionstamp);
  eq(gone.value, null);
});

dbTest("sum, min and max on KvU64", async (kv, p) => {
  await kv.atomic().sum([p, "n"], 5n).commit();
  await kv.atomic().sum([p, "n"], 7n).commit();
  eq((await kv.get([p, "n"])).value, new Deno.KvU64(12n));
  await kv.atomic().sum([p, "n"], 0xffffffffffffffffn).commit();
  eq((await kv.get([p, "n"])).value, new Deno.KvU64(11n), "sum wraps");
  await kv.atomic().min([p, "n"], 3n).commit();
  eq((await kv.get([p, "n"])).value, new Deno.KvU64(3n));
  await kv.atomic().max([p, "n"], 30n).commit();
  eq((await kv.get([p, "n"])).value, new Deno.KvU64(30n));
  await kv.atomic().min([p, "fresh"], 9n).commit();
  eq((await kv.get([p, "fresh"])).value, new Deno.KvU64(9n), "min on a missing key");
});

dbTest("sum on a value that is not a KvU64 fails and writes nothing", async (kv, p) => {
  await kv.set([p, "s"], "text");
  await rejects(() => kv.atomic().sum([p, "s"], 1n).set([p, "other"], 1).commit(), "sum on str");
  eq((await kv.get([p, "s"])).value, "text");
  eq((await kv.get([p, "other"])).value, null);
});

// Deno's remote client raises a plain Error with the server's sentence for any
// 4xx answer; its file store raises a TypeError here. No KV Connect answer can
// make it a TypeError (docs/how-to/share-data-with-deno.md, "Errors Deno sees").
dbTest("sum, min and max on a non-U64 value or operand reject with the server's sentence", async (kv, p) => {
  await kv.set([p, "s"], "text");
  await kv.set([p, "n"], new Deno.KvU64(1n));
  const cases: [string, () => Promise<unknown>, string][] = [
    ["sum", () => kv.atomic().sum([p, "s"], 1n).commit(), "not a KvU64"],
    ["min", () => kv.atomic().min([p, "s"], 1n).commit(), "not a KvU64"],
    ["max", () => kv.atomic().max([p, "s"], 1n).commit(), "not a KvU64"],
    // deno-lint-ignore no-explicit-any
    ["sum operand", () => kv.atomic().mutate({ type: "sum", key: [p, "n"], value: 1 as any }).commit(), "must be a KvU64"],
  ];
  for (const [what, fn, sentence] of cases) {
    let error: unknown = null;
    try {
      await fn();
    } catch (e) {
      error = e;
    }
    if (!(error instanceof Error)) throw new Error(`${what} did not throw`);
    if (!error.message.includes("status=400") || !error.message.includes(sentence)) {
      throw new Error(`${what}: unexpected message ${JSON.stringify(error.message)}`);
    }
  }
  eq((await kv.get([p, "s"])).value, "text");
  eq((await kv.get([p, "n"])).value, new Deno.KvU64(1n));
});

async function fill(kv: Deno.Kv, p: string) {
  for (const k of ["a", "b", "c", "d", "e"]) await kv.set([p, "l", k], k);
}
async function keysOf(it: Deno.KvListIterator<unknown>) {
  const out = [];
  for await (const e of it) out.push(e.key.at(-1));
  return out;
}

dbTest("list: prefix, start, end, reverse, limit", async (kv, p) => {
  await fill(kv, p);
  eq(await keysOf(kv.list({ prefix: [p, "l"] })), ["a", "b", "c", "d", "e"]);
  eq(await keysOf(kv.list({ prefix: [p, "l"] }, { reverse: true })), ["e", "d", "c", "b", "a"]);
  eq(await keysOf(kv.list({ prefix: [p, "l"] }, { limit: 2 })), ["a", "b"]);
  eq(await keysOf(kv.list({ prefix: [p, "l"] }, { limit: 2, reverse: true })), ["e", "d"]);
  eq(await keysOf(kv.list({ prefix: [p, "l"], start: [p, "l", "b"] })), ["b", "c", "d", "e"]);
  eq(await keysOf(kv.list({ prefix: [p, "l"], end: [p, "l", "c"] })), ["a", "b"]);
  eq(await keysOf(kv.list({ start: [p, "l", "b"], end: [p, "l", "d"] })), ["b", "c"]);
});

dbTest("list: cursors resume forward and in reverse, with small batches", async (kv, p) => {
  await fill(kv, p);
  const first = kv.list({ prefix: [p, "l"] }, { limit: 2 });
  eq(await keysOf(first), ["a", "b"]);
  eq(first.cursor, "AmIA");
  const rest = kv.list({ prefix: [p, "l"] }, { cursor: first.cursor });
  eq(await keysOf(rest), ["c", "d", "e"]);
  const back = kv.list({ prefix: [p, "l"] }, { limit: 2, reverse: true });
  eq(await keysOf(back), ["e", "d"]);
  eq(await keysOf(kv.list({ prefix: [p, "l"] }, { reverse: true, cursor: back.cursor })), [
    "c", "b", "a",
  ]);
  eq(await keysOf(kv.list({ prefix: [p, "l"] }, { batchSize: 2 })), ["a", "b", "c", "d", "e"]);
});

dbTest("list of more than one batch (1000 entries per read)", async (kv, p) => {
  for (let i = 0; i < 1200; i += 100) {
    const op = kv.atomic();
    for (let j = i; j < i + 100; j++) op.set([p, "many", j], j);
    assert((await op.commit()).ok);
  }
  let n = 0;
  for await (const e of kv.list<number>({ prefix: [p, "many"] })) eq(e.value, n++);
  eq(n, 1200);
});

dbTest("expireIn: an expired key reads as absent", async (kv, p) => {
  await kv.set([p, "tmp"], "soon gone", { expireIn: 300 });
  await kv.set([p, "keep"], "stays");
  eq((await kv.get([p, "tmp"])).value, "soon gone");
  await new Promise((r) => setTimeout(r, 1200));
  eq((await kv.get([p, "tmp"])).value, null);
  eq(await keysOf(kv.list({ prefix: [p] })), ["keep"]);
});

dbTest("watch: the current entries, then each change", async (kv, p) => {
  const stream = kv.watch([[p, "w"], [p, "v"]]);
  const reader = stream.getReader();
  const first = await reader.read();
  eq(first.value!.map((e) => e.value), [null, null]);
  await kv.set([p, "w"], 1);
  const second = await reader.read();
  eq(second.value!.map((e) => e.value), [1, null]);
  await kv.set([p, "v"], "x");
  const third = await reader.read();
  eq(third.value!.map((e) => e.value), [1, "x"]);
  await kv.delete([p, "w"]);
  const fourth = await reader.read();
  eq(fourth.value!.map((e) => e.value), [null, "x"]);
  await reader.cancel();
});

dbTest("limits: a key over 2048 bytes and a value over 65536 bytes are refused", async (kv, p) => {
  await rejects(() => kv.set([p, "k".repeat(2100)], 1), "long key");
  await rejects(() => kv.set([p, "big"], new Uint8Array(65537)), "big value");
  eq((await kv.get([p, "big"])).value, null);
});

dbTest("Deno's KV Connect client refuses enqueue and listenQueue itself", async (kv, p) => {
  // Deno 2.9 throws "Enqueue operations are not supported in KV Connect"
  // before sending anything, so the server is never asked.
  await rejects(() => kv.enqueue({ job: p }), "enqueue");
  await rejects(() => kv.atomic().set([p, "a"], 1).enqueue("m").commit(), "atomic enqueue");
  eq((await kv.get([p, "a"])).value, null);
});
