/**
 * The files `microagent init` writes: a spec, a one-shot agent script per provider, its system prompt,
 * a README and a demo input. The script is POSIX sh with curl or wget and awk, so that it runs in the
 * built-in busybox image as well as in any image with curl.
 */

export const providers = ["anthropic", "openai", "gemini"] as const
export type Provider = typeof providers[number]

interface ProviderShape {
  readonly title: string
  /** The API key's variable, also the secret's name under /run/secrets. */
  readonly keyVar: string
  /** The variable that points the agent at another endpoint (a proxy, a stand-in). */
  readonly baseVar: string
  readonly baseUrl: string
  readonly host: string
  readonly model: string
  /** Path under the base URL; `$model` is the shell's. */
  readonly path: string
  /** printf format of the request body: the model, the system prompt, the user's text (as JSON string contents). */
  readonly body: string
  /** Header arguments of `post`, in shell syntax; `$key` is the API key. */
  readonly headers: string
  /** The JSON key whose first string value is the reply. */
  readonly replyKey: string
}

const shapes: Record<Provider, ProviderShape> = {
  anthropic: {
    title: "Anthropic",
    keyVar: "ANTHROPIC_API_KEY",
    baseVar: "ANTHROPIC_BASE_URL",
    baseUrl: "https://api.anthropic.com",
    host: "api.anthropic.com",
    model: "claude-sonnet-4-5",
    path: "/v1/messages",
    body: `{"model":"%s","max_tokens":1024,"system":"%s","messages":[{"role":"user","content":"%s"}]}\\n`,
    headers: `"x-api-key: $key" "anthropic-version: 2023-06-01"`,
    replyKey: "text"
  },
  openai: {
    title: "OpenAI",
    keyVar: "OPENAI_API_KEY",
    baseVar: "OPENAI_BASE_URL",
    baseUrl: "https://api.openai.com/v1",
    host: "api.openai.com",
    model: "gpt-4o-mini",
    path: "/chat/completions",
    body: `{"model":"%s","messages":[{"role":"system","content":"%s"},{"role":"user","content":"%s"}]}\\n`,
    headers: `"authorization: Bearer $key"`,
    replyKey: "content"
  },
  gemini: {
    title: "Gemini",
    keyVar: "GEMINI_API_KEY",
    baseVar: "GEMINI_BASE_URL",
    baseUrl: "https://generativelanguage.googleapis.com",
    host: "generativelanguage.googleapis.com",
    model: "gemini-2.0-flash",
    path: "/v1beta/models/$model:generateContent",
    // The model is in the path; the first %s is left empty.
    body:
      `%s{"systemInstruction":{"parts":[{"text":"%s"}]},"contents":[{"role":"user","parts":[{"text":"%s"}]}]}\\n`,
    headers: `"x-goog-api-key: $key"`,
    replyKey: "text"
  }
}

export const providerShape = (provider: Provider): ProviderShape => shapes[provider]

/** The built-in image: it boots without a registry. */
const scaffoldImage = "microagent.local/busybox:latest"

export interface ScaffoldFile {
  /** Relative to the scaffold's directory. */
  readonly path: string
  readonly content: string
  readonly mode: number
}

const agentScript = (name: string, p: ProviderShape, provider: Provider) =>
  `#!/bin/sh
# ${name}: a one-shot agent. Each start reads the prompt in $AGENT_INPUT, asks ${p.title}'s API once and
# writes the reply to $AGENT_OUT/reply.txt (and prints it); the raw response is kept in response.json.
# The endpoint is $${p.baseVar} (default ${p.baseUrl}); the key is $${p.keyVar} or the secret
# /run/secrets/${p.keyVar}.
set -eu
input=\${AGENT_INPUT:-/workspace/input.txt}
out=\${AGENT_OUT:-/workspace/out}
system_prompt=\${AGENT_SYSTEM_PROMPT:-/workspace/system_prompt.md}
base=\${${p.baseVar}:-${p.baseUrl}}
model=\${MODEL:-${p.model}}
key=\${${p.keyVar}:-}
if [ -z "$key" ] && [ -r /run/secrets/${p.keyVar} ]; then key=$(cat /run/secrets/${p.keyVar}); fi
if [ -z "$key" ]; then
  echo "agent: no API key: create the workspace with --secret ${p.keyVar}=env:${p.keyVar}" >&2
  exit 2
fi
if [ ! -r "$input" ]; then
  echo "agent: no input at $input: microagent cp demo/input.txt WORKSPACE:$input" >&2
  exit 2
fi
mkdir -p "$out"

# A text file as the inside of a JSON string.
json_string() {
  tr -d '\\015' <"$1" | sed -e 's/\\\\/\\\\\\\\/g' -e 's/"/\\\\"/g' -e 's/\\t/\\\\t/g' |
    awk '{ printf "%s%s", (NR > 1 ? "\\\\n" : ""), $0 }'
}

# The first string value of the key $1 in the JSON file $2, unescaped (\\uXXXX kept above ASCII).
json_field() {
  awk -v key="$1" '
    { doc = doc $0 "\\n" }
    END {
      if (!match(doc, "\\"" key "\\"[ \\t\\r\\n]*:[ \\t\\r\\n]*\\"")) exit 1
      s = substr(doc, RSTART + RLENGTH); reply = ""
      for (i = 1; i <= length(s); i++) {
        c = substr(s, i, 1)
        if (c == "\\"") break
        if (c != "\\\\") { reply = reply c; continue }
        d = substr(s, ++i, 1)
        if (d == "n") reply = reply "\\n"
        else if (d == "t") reply = reply "\\t"
        else if (d == "r" || d == "b" || d == "f") continue
        else if (d == "u") {
          code = 0; hex = tolower(substr(s, i + 1, 4))
          for (j = 1; j <= 4; j++) code = code * 16 + index("0123456789abcdef", substr(hex, j, 1)) - 1
          reply = reply (code < 128 ? sprintf("%c", code) : "\\\\u" hex); i += 4
        } else reply = reply d
      }
      printf "%s\\n", reply
    }' "$2"
}

# POSTs the JSON file $1 to $2, the other arguments being headers; the response lands in response.json.
post() {
  body=$1 url=$2
  shift 2
  n=$#
  if command -v curl >/dev/null 2>&1; then
    for h; do set -- "$@" -H "$h"; done
    shift "$n"
    status=$(curl -sS --max-time 300 -o "$out/response.json" -w '%{http_code}' "$@" \\
      -H 'content-type: application/json' --data-binary "@$body" "$url")
    case $status in
      2??) ;;
      *) echo "agent: $url answered HTTP $status" >&2; cat "$out/response.json" >&2; return 1 ;;
    esac
  else
    for h; do set -- "$@" --header "$h"; done
    shift "$n"
    wget -q -O "$out/response.json" "$@" --header 'content-type: application/json' --post-file "$body" "$url"
  fi
}

printf '${p.body}' "${
    provider === "gemini" ? "" : "$model"
  }" "$(json_string "$system_prompt")" "$(json_string "$input")" \\
  >"$out/request.json"
post "$out/request.json" "$base${p.path}" ${p.headers}
if ! json_field ${p.replyKey} "$out/response.json" >"$out/reply.txt"; then
  echo "agent: no reply in the response:" >&2
  cat "$out/response.json" >&2
  exit 1
fi
cat "$out/reply.txt"
`

const specFile = (name: string, p: ProviderShape) =>
  `# ${name}: an agent workspace that asks ${p.title}'s API (README.md says how to run it).
name: ${name}
# The built-in busybox image boots without a registry; its wget speaks plain HTTP only. For the
# provider's HTTPS endpoint use an image with curl, e.g. alpine:3.20 with "apk add --no-cache curl"
# as the first setup step (and the Alpine mirror in egress.allow).
image: ${scaffoldImage}
# Run once, at the first start.
setup:
  - mkdir -p /workspace/out
  - 'command -v curl >/dev/null || command -v wget >/dev/null || { echo "neither curl nor wget in the image" >&2; exit 1; }'
# Run at every start; its outcome is \`microagent result ${name}\`.
entrypoint: /workspace/agent.sh
env:
  MODEL: ${p.model}
# Copied in at every start, before the entrypoint.
files:
  - { src: agent.sh, dst: /workspace/agent.sh, mode: "0755" }
  - { src: system_prompt.md, dst: /workspace/system_prompt.md, mode: "0644" }
outputs:
  - { name: reply, path: /workspace/out/reply.txt }
# Mediated egress: only the provider's API host (add your own endpoint to reach a proxy or a stand-in).
egress:
  allow: [${p.host}]
  lockAllowlist: true
`

const readme = (name: string, p: ProviderShape, provider: Provider) =>
  `# ${name}

An agent workspace made by \`microagent init --provider ${provider}\`. Each start runs \`agent.sh\` once:
it reads the prompt in \`/workspace/input.txt\`, sends it with \`system_prompt.md\` to ${p.title}'s API,
writes the reply to \`/workspace/out/reply.txt\` and prints it, so \`microagent result\` shows it.

| file | what it is |
|---|---|
| \`microagent.yaml\` | the workspace: image, setup, entrypoint, files, outputs, egress |
| \`agent.sh\` | the agent (POSIX sh; curl, or wget for plain HTTP) |
| \`system_prompt.md\` | its system prompt, copied in at every start |
| \`demo/input.txt\` | a prompt to try it with |

## Run it

\`\`\`sh
microagent create --file ${name}/microagent.yaml --secret ${p.keyVar}=env:${p.keyVar}
microagent cp ${name}/demo/input.txt ${name}:/workspace/input.txt
microagent start ${name}
microagent result --wait ${name}
microagent cp ${name}:/workspace/out/reply.txt reply.txt
\`\`\`

The key is a secret: it is read from your environment at each start and lands in the guest's
\`/run/secrets/${p.keyVar}\` (a tmpfs), never in the workspace's record or disk. Change the input
(\`microagent cp\`) and \`microagent start ${name}\` again for another answer.

## How the provider is reached

The guest's traffic goes through microagent's egress mediator, which lets it reach
\`${p.host}\` and nothing else (\`egress.allow\` with \`lockAllowlist\`). The agent posts to
\`$${p.baseVar}${p.path}\`, \`$${p.baseVar}\` defaulting to \`${p.baseUrl}\`.

The built-in busybox image's wget has no TLS that the provider accepts: for the real endpoint, use an
image with curl (\`image: alpine:3.20\` and \`apk add --no-cache curl\` as the first setup step, with
the Alpine mirror added to \`egress.allow\`). To try the agent without a key or TLS, point it at a
plain-HTTP stand-in that speaks the same API (a local proxy, a mock) and allow that address:

\`\`\`sh
microagent create --file ${name}/microagent.yaml -e ${p.baseVar}=http://192.0.2.2:8080 \\
  -e ${p.keyVar}=test --egress-allow 192.0.2.2:8080
\`\`\`

(192.0.2.2 standing for an address of your host: the mediator keeps the host's addresses out of
reach unless they are allowed like this.)
`

const systemPrompt = `You are a careful assistant. Answer the user's request directly and briefly.
`

const demoInput = `In two sentences: what is a microVM, and why would an AI agent run in one?
`

/** Every file of the scaffold of `name` for `provider`. */
export const scaffoldFiles = (name: string, provider: Provider): ReadonlyArray<ScaffoldFile> => {
  const p = shapes[provider]
  return [
    { path: "microagent.yaml", content: specFile(name, p), mode: 0o644 },
    { path: "agent.sh", content: agentScript(name, p, provider), mode: 0o755 },
    { path: "system_prompt.md", content: systemPrompt, mode: 0o644 },
    { path: "README.md", content: readme(name, p, provider), mode: 0o644 },
    { path: "demo/input.txt", content: demoInput, mode: 0o644 }
  ]
}
