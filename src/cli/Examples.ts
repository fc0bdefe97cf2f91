/**
 * Examples shown at the end of a command's help and in docs/cli.md, by command path ("run",
 * "image pull"). Each must parse: test/cli/Help.test.ts checks every example against the command's
 * flags and arguments, so an example cannot outlive a flag it uses. Top-level commands carry 2-4.
 */
export const examples: Readonly<Record<string, ReadonlyArray<string>>> = {
  doctor: ["microagent doctor", "microagent doctor --json"],
  dispatch: [
    "microagent dispatch -- sh -c 'nc -w 2 example.com 80 </dev/null'",
    "microagent dispatch --json --egress-lock-allowlist -- nslookup example.com"
  ],
  run: [
    "microagent run alpine:3.20 -- echo hello",
    "microagent run --image alpine --setup 'apk add git' --exec 'git --version'"
  ],
  init: [
    "microagent init my-agent",
    "microagent init --provider openai --dir ~/agents reviewer",
    "microagent init my-agent --force --json"
  ],
  apply: [
    "microagent apply --file microagent.yaml",
    "microagent apply --file microagent.yaml --dry-run agent"
  ],
  create: [
    "microagent create --image alpine:3.20 dev",
    "microagent create --file microagent.yaml --profile medium -p 8080:80 web",
    "microagent create dev2 --from-snapshot dev:before-upgrade",
    "microagent create --model org/repo/m.gguf --model-mediation local-allow ai"
  ],
  start: [
    "microagent start dev",
    "microagent start --secret token=env:API_TOKEN dev",
    "microagent start --wait --wait-timeout 10m --memory 2048 job",
    "microagent start --from-snapshot before-upgrade dev"
  ],
  exec: [
    "microagent exec dev -- uname -a",
    "microagent exec --cwd /work -e DEBUG=1 dev -- make test",
    "microagent exec --stream dev -- sh -c 'while sleep 1; do date; done'"
  ],
  cp: ["microagent cp ./data dev:/work/data", "microagent cp dev:/var/log/app.log ."],
  commit: [
    "microagent commit dev localhost/team/dev:1",
    "microagent commit --diff --push -m 'tools added' dev 127.0.0.1:5000/team/dev:1"
  ],
  clone: ["microagent clone dev dev-copy", "microagent clone dev dev-copy --json"],
  fork: ["microagent fork dev", "microagent fork dev --count 3 --name-prefix try"],
  connect: [
    "microagent connect dev",
    "microagent connect --detach-keys ctrl-p,ctrl-q dev -- bash",
    "microagent connect --send 'uname -a' --timeout 10s dev"
  ],
  stats: ["microagent stats dev", "microagent stats -f --interval 2s dev", "microagent stats dev --json"],
  resize: ["microagent resize --size-mib 4096 dev", "microagent resize dev --size-mib 2048 --json"],
  inspect: ["microagent inspect dev", "microagent inspect dev --json"],
  wait: ["microagent wait dev", "microagent wait --timeout 30 dev"],
  supervise: [
    "microagent supervise web",
    "microagent supervise --interval 10s --max-restarts 5 web",
    "microagent supervise --install web"
  ],
  result: [
    "microagent result dev",
    "microagent result --wait --timeout 10m dev",
    "microagent result dev --json"
  ],
  halt: ["microagent halt dev", "microagent halt --timeout 5 --reason maintenance dev"],
  kill: ["microagent kill dev", "microagent kill dev --json"],
  pause: ["microagent pause dev", "microagent pause dev --reason 'inspect memory'"],
  quarantine: [
    "microagent quarantine dev --reason 'exfiltration attempt'",
    "microagent quarantine --no-capture dev"
  ],
  resume: ["microagent resume dev", "microagent resume dev --json"],
  delete: ["microagent delete dev", "microagent delete --force dev scratch"],
  list: ["microagent list", "microagent list --json"],
  ps: ["microagent ps", "microagent ps --json"],
  logs: ["microagent logs dev", "microagent logs --follow dev"],
  events: ["microagent events dev", "microagent events --follow --json dev"],
  egress: ["microagent egress dev", "microagent egress -f dev"],
  artifacts: [
    "microagent artifacts ls run-quiet-otter-1a2b",
    "microagent artifacts get run-quiet-otter-1a2b report ./out/",
    "microagent artifacts rm run-quiet-otter-1a2b"
  ],
  "artifacts ls": ["microagent artifacts ls dev"],
  "artifacts get": ["microagent artifacts get dev report ./report.json"],
  "artifacts rm": ["microagent artifacts rm dev"],
  image: [
    "microagent image pull alpine:3.20",
    "microagent image import ./layout --tag local/tool:1",
    "microagent image ls",
    "microagent image rm --purge alpine:3.20"
  ],
  "image pull": [
    "microagent image pull alpine:3.20",
    "microagent image pull --platform linux/arm64 debian:12"
  ],
  "image push": [
    "microagent image push 127.0.0.1:5000/team/tool:1",
    "microagent image push alpine:3.20 --to registry.example/mirror/alpine:3.20",
    "microagent image push --insecure-registry lab.internal:5000/tools/app:2 --json"
  ],
  "image save": [
    "microagent image save alpine:3.20 -o alpine.tar",
    "microagent image save --output ./busybox.tar microagent.local/busybox:latest"
  ],
  registry: [
    "microagent registry login ghcr.io -u me --password-stdin",
    "microagent registry list",
    "microagent registry logout ghcr.io"
  ],
  "registry login": [
    "microagent registry login ghcr.io -u me --password-stdin",
    "microagent registry login 127.0.0.1:5000 -u ci -p secret"
  ],
  "registry logout": ["microagent registry logout ghcr.io"],
  "registry list": ["microagent registry list", "microagent registry list --json"],
  "registry ls": ["microagent registry ls"],
  "image import": ["microagent image import ./image.tar --tag local/tool:1"],
  "image list": ["microagent image list --json"],
  "image ls": ["microagent image ls"],
  "image inspect": ["microagent image inspect alpine:3.20"],
  "image tag": ["microagent image tag alpine:3.20 base:latest"],
  "image rm": ["microagent image rm alpine:3.20", "microagent image rm --purge alpine:3.20 debian:12"],
  "image delete": ["microagent image delete alpine:3.20"],
  "image prune": ["microagent image prune", "microagent image prune --purge"],
  kernel: ["microagent kernel ensure", "microagent kernel list", "microagent kernel verify"],
  "kernel list": ["microagent kernel list --json"],
  "kernel install": [
    "microagent kernel install",
    "microagent kernel install --path ./vmlinuz --modules-dir ./modules/6.1.0-28"
  ],
  "kernel verify": ["microagent kernel verify"],
  "kernel ensure": ["microagent kernel ensure", "microagent kernel ensure --machine q35"],
  snapshot: [
    "microagent snapshot create --tag before-upgrade dev",
    "microagent snapshot list dev",
    "microagent snapshot delete dev before-upgrade"
  ],
  "snapshot create": [
    "microagent snapshot create dev",
    "microagent snapshot create --tag before-upgrade dev"
  ],
  "snapshot list": ["microagent snapshot list dev", "microagent snapshot list dev --json"],
  "snapshot ls": ["microagent snapshot ls dev"],
  "snapshot delete": ["microagent snapshot delete dev before-upgrade"],
  "snapshot rm": ["microagent snapshot rm dev before-upgrade"],
  template: ["microagent template list", "microagent template prune"],
  "template list": ["microagent template list", "microagent template list --json"],
  "template ls": ["microagent template ls"],
  "template prune": ["microagent template prune", "microagent template prune --all"],
  volume: [
    "microagent volume create --size-mib 2048 cache",
    "microagent run -v cache:/cache alpine -- du -sh /cache",
    "microagent volume resize --size-mib 4096 cache"
  ],
  "volume create": ["microagent volume create cache", "microagent volume create --size-mib 4096 data"],
  "volume ls": ["microagent volume ls"],
  "volume list": ["microagent volume list --json"],
  "volume inspect": ["microagent volume inspect cache"],
  "volume rm": ["microagent volume rm cache", "microagent volume rm --force cache"],
  "volume delete": ["microagent volume delete cache"],
  "volume resize": ["microagent volume resize --size-mib 4096 cache"],
  model: [
    "microagent model pull hf.co/ggml-org/models/tinyllamas/stories260K.gguf",
    "microagent model list",
    "microagent model inspect hf.co/ggml-org/models/tinyllamas/stories260K.gguf"
  ],
  "model pull": [
    "microagent model pull hf.co/ggml-org/models@main/tinyllamas/stories260K.gguf",
    "microagent model pull --token hf_xxx hf.co/org/private-repo/model.Q4_K_M.gguf"
  ],
  "model list": ["microagent model list --json"],
  "model ls": ["microagent model ls"],
  "model inspect": ["microagent model inspect --json hf.co/org/repo/model.Q4_K_M.gguf"],
  "model delete": ["microagent model delete hf.co/ggml-org/models/tinyllamas/stories260K.gguf"],
  "model rm": ["microagent model rm hf.co/ggml-org/models/tinyllamas/stories260K.gguf"],
  "model prune": ["microagent model prune"],
  "model serve": [
    "microagent model serve hf.co/ggml-org/models/tinyllamas/stories260K.gguf",
    "microagent model serve --ctx 2048 --port 11434 hf.co/org/repo/model.Q4_0.gguf",
    "microagent model serve --runner custom --runner-command './r {model} {port}' M",
    "microagent model serve --dedicated --port 8081 hf.co/org/repo/model.Q4_0.gguf"
  ],
  "model stop": ["microagent model stop hf.co/ggml-org/models/tinyllamas/stories260K.gguf"],
  "model runners": ["microagent model runners", "microagent model runners --json"],
  "model policy": [
    "microagent model policy validate policy.json",
    "microagent model policy evaluate --max-tokens 500 --expect deny policy.json"
  ],
  "model policy validate": ["microagent model policy validate policy.json"],
  "model policy evaluate": [
    "microagent model policy evaluate --path /v1/models --method GET policy.json",
    "microagent model policy evaluate --max-tokens 500 --expect deny policy.json"
  ],
  "model policy eval": ["microagent model policy eval --stream --tool shell policy.json"],
  secret: [
    "microagent secret check token=env:API_TOKEN",
    "microagent secret check db=dotenv:.env:DB_PASSWORD key=file:./id_ed25519"
  ],
  "secret check": ["microagent secret check token=env:API_TOKEN"],
  network: [
    "microagent network create backend",
    "microagent run --network backend --name api alpine -- sleep 600",
    "microagent network inspect backend"
  ],
  "network create": [
    "microagent network create backend",
    "microagent network create --subnet 10.90.0.0/24 lab"
  ],
  "network ls": ["microagent network ls"],
  "network list": ["microagent network list --json"],
  "network inspect": ["microagent network inspect backend"],
  "network rm": ["microagent network rm backend", "microagent network rm --force backend"],
  profiles: ["microagent profiles", "microagent run --profile large debian:12 -- nproc"],
  perf: ["microagent perf boot --runs 5", "microagent perf footprint"],
  "perf boot": [
    "microagent perf boot",
    "microagent perf boot --runs 10 --network isolated alpine:3.20",
    "microagent perf boot --iterations 3 --exec 'uname -r'"
  ],
  "perf footprint": ["microagent perf footprint", "microagent perf footprint dev"],
  "perf steady": [
    "microagent perf steady dev",
    "microagent perf steady --duration 1m --interval 5s dev --json"
  ],
  runtime: ["microagent runtime", "microagent runtime --idle-seconds 600"],
  gc: ["microagent gc", "microagent gc --json"],
  state: ["microagent state check", "microagent state backup", "microagent state restore"],
  "state check": ["microagent state check", "microagent state check --json"],
  "state backup": ["microagent state backup", "microagent state backup --to ./state-copy.db"],
  "state restore": ["microagent state restore", "microagent state restore state-20261204T101500Z-manual.db"],
  completion: [
    "microagent completion bash",
    "microagent completion zsh",
    "microagent completion fish"
  ],
  serve: ["microagent serve mcp", "microagent serve rpc --socket /run/user/1000/microagent.sock"],
  "serve rpc": ["microagent serve rpc --socket ./microagent.sock"],
  "serve mcp": [
    "microagent serve mcp",
    "microagent serve mcp --host-root ./project --allow-secret GITHUB_TOKEN"
  ]
}
