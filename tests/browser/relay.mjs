// Two RTCPeerConnections in one headless Chromium page, both with iceTransportPolicy
// "relay" and one TURN server, open a data channel, exchange messages both ways, and report
// the selected candidate pair. Prints one JSON line; exits 0 only when every message came
// back and both ends of the selected pair are relay candidates.
//
//   node relay.mjs --url 'turn:127.0.0.1:3478?transport=tcp' --user alice --pass secret \
//        [--chromium /usr/bin/chromium] [--messages 20] [--timeout-ms 30000]
import { chromium } from "playwright-core";

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const url = arg("url");
const username = arg("user", "alice");
const credential = arg("pass", "secret");
const executablePath = arg("chromium", "/usr/bin/chromium");
const messages = Number(arg("messages", "20"));
const timeoutMs = Number(arg("timeout-ms", "30000"));
if (!url) {
  console.error("usage: node relay.mjs --url TURN_URL [--user U --pass P]");
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: [
    "--no-sandbox",
    // The test's certificate is self-signed.
    "--ignore-certificate-errors",
    // Everything here is on loopback, which WebRTC leaves out of its networks by default.
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
  ],
});
let result;
try {
  const page = await browser.newPage();
  result = await page.evaluate(
    async ({ url, username, credential, messages, timeoutMs }) => {
      const config = {
        iceServers: [{ urls: url, username, credential }],
        iceTransportPolicy: "relay",
      };
      const a = new RTCPeerConnection(config);
      const b = new RTCPeerConnection(config);
      const candidates = { a: [], b: [] };
      a.onicecandidate = (e) => {
        if (e.candidate) {
          candidates.a.push(e.candidate.candidate);
          b.addIceCandidate(e.candidate);
        }
      };
      b.onicecandidate = (e) => {
        if (e.candidate) {
          candidates.b.push(e.candidate.candidate);
          a.addIceCandidate(e.candidate);
        }
      };
      const timeout = new Promise((_, reject) =>
        setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms`)), timeoutMs),
      );
      const sent = [];
      const echoed = [];
      const work = (async () => {
        const channel = a.createDataChannel("uturn", { ordered: true });
        b.ondatachannel = (e) => {
          // b echoes every message back.
          e.channel.onmessage = (m) => e.channel.send(`echo:${m.data}`);
        };
        await a.setLocalDescription();
        await b.setRemoteDescription(a.localDescription);
        await b.setLocalDescription();
        await a.setRemoteDescription(b.localDescription);
        await new Promise((resolve) => {
          if (channel.readyState === "open") resolve();
          channel.onopen = resolve;
        });
        const allBack = new Promise((resolve) => {
          channel.onmessage = (m) => {
            echoed.push(m.data);
            if (echoed.length === messages) resolve();
          };
        });
        for (let i = 0; i < messages; i++) {
          const text = `message ${i} ${"x".repeat(i * 50)}`;
          sent.push(text);
          channel.send(text);
        }
        await allBack;
      })();
      let error = null;
      try {
        await Promise.race([work, timeout]);
      } catch (e) {
        error = String(e);
      }
      const pair = async (pc) => {
        const stats = await pc.getStats();
        let selected = null;
        stats.forEach((s) => {
          if (s.type === "transport" && s.selectedCandidatePairId) {
            selected = stats.get(s.selectedCandidatePairId);
          }
        });
        if (!selected) return null;
        const local = stats.get(selected.localCandidateId);
        const remote = stats.get(selected.remoteCandidateId);
        return {
          state: selected.state,
          local: local && local.candidateType,
          localRelayProtocol: local && local.relayProtocol,
          local_address: local && `${local.address}:${local.port}`,
          remote: remote && remote.candidateType,
          bytesSent: selected.bytesSent,
          bytesReceived: selected.bytesReceived,
        };
      };
      const out = {
        error,
        sent: sent.length,
        echoed: echoed.length,
        intact: echoed.every((m, i) => m === `echo:${sent[i]}`),
        pairA: await pair(a),
        pairB: await pair(b),
        candidates,
      };
      a.close();
      b.close();
      return out;
    },
    { url, username, credential, messages, timeoutMs },
  );
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
// One plain line for the Rust test to match.
const brief = (p) => (p ? `${p.local}/${p.remote}/${p.localRelayProtocol}` : "none");
console.log(
  `RESULT echoed=${result.echoed} intact=${result.intact} pairA=${brief(result.pairA)} pairB=${brief(result.pairB)}`,
);
const relayed = (p) => p && p.local === "relay" && p.remote === "relay";
const ok =
  !result.error &&
  result.echoed === messages &&
  result.intact &&
  relayed(result.pairA) &&
  relayed(result.pairB);
process.exit(ok ? 0 : 1);
