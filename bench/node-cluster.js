// The seed document's Node.js cluster hello (2 workers by default), as the
// baseline wcluster is measured against. It sets X-Wcluster-Worker like
// wcluster's default handler so the fairness benchmark can count per worker.
// NODE_CLUSTER_SCHED_POLICY=rr|none picks Node's policy. With COST=1 a
// request for /?n=N first runs N rounds of the xorshift loop guests/go/spin
// runs, so the fairness benchmark can load both with the same variable work.
const cluster = require('cluster');
const http = require('http');
const port = Number(process.env.PORT || 8000);
const workers = Number(process.env.WORKERS || 2);

if (cluster.isPrimary) {
  for (let i = 0; i < workers; i++) cluster.fork();
  let ready = 0;
  cluster.on('listening', () => {
    if (++ready === workers) console.error(`node cluster serving on 127.0.0.1:${port}`);
  });
} else {
  const id = String(cluster.worker.id);
  const cost = process.env.COST === '1';
  const spin = (n) => {
    let x = 88172645 | 0;
    for (let i = 0; i < n; i++) { x ^= x << 13; x ^= x >>> 7; x ^= x << 17; }
    return x;
  };
  http.Server((req, res) => {
    if (cost) {
      const m = /[?&]n=(\d+)/.exec(req.url);
      spin(m ? Number(m[1]) : 1000);
    }
    res.writeHead(200, { 'Content-Type': 'text/plain', 'X-Wcluster-Worker': id });
    res.end('hello world\n');
  }).listen(port, '127.0.0.1');
}
