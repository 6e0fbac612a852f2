// graphile-worker for bench/jobs_e2e.sh: `node worker.js URL CONCURRENCY` runs a worker
// whose one task, `task`, does nothing; `node worker.js URL add N` adds N `task` jobs in
// batches of 1000 (addJobs: one statement each) and exits.
const { run, makeWorkerUtils } = require("graphile-worker");

async function main() {
  const [url, mode, arg] = process.argv.slice(2);
  if (mode === "add") {
    const utils = await makeWorkerUtils({ connectionString: url });
    await utils.migrate();
    const n = Number(arg);
    for (let lo = 0; lo < n; lo += 1000) {
      const specs = [];
      for (let i = lo; i < Math.min(n, lo + 1000); i++) {
        specs.push({ identifier: "task", payload: { n: i } });
      }
      await utils.addJobs(specs);
    }
    await utils.release();
    return;
  }
  const runner = await run({
    connectionString: url,
    concurrency: Number(mode),
    noHandleSignals: false,
    pollInterval: 1000,
    taskList: { task: async () => {} },
  });
  await runner.promise;
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
