"""The verdict page the operator uses (one self-contained HTML document, no external assets)."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pushcut: judge episodes</title>
<meta name="pushcut-page" content="__PUSHCUT_PAGE_SECRET__">
<style>
body{font-family:sans-serif;margin:1.5em;background:#fafafa}
.card{border:3px solid #ccc;border-radius:8px;padding:.6em;margin:.6em 0;background:#fff}
.card.selected{border-color:#2a6edb}
.card.success{background:#e3f6e3}.card.failure{background:#fbe3e3}
.frames img{height:128px;margin-right:4px;image-rendering:pixelated;border:1px solid #999}
button{font-size:1.1em;margin:.3em .3em 0 0;padding:.3em 1em}
#status{font-weight:bold}
</style></head>
<body>
<h1>Did the robot succeed?</h1>
<p>Keys: <b>s</b>/<b>y</b> success, <b>f</b>/<b>n</b> failure for the highlighted episode; arrows move.</p>
<p id="status">waiting for episodes…</p>
<div id="episodes"></div>
<script>
const secret = document.querySelector('meta[name=pushcut-page]').content;
let round = -1, open = false, episodes = [], selected = 0;
const box = document.getElementById('episodes');
function card(ep) {
  const div = document.createElement('div');
  div.className = 'card'; div.id = 'episode-' + ep.index; div.dataset.index = ep.index;
  const title = document.createElement('div');
  title.textContent = '#' + ep.index + '  ' + ep.task_id + ' (start ' + ep.init_state + ', ' + ep.length +
    ' steps): "' + ep.instruction + '"' + ('env_success' in ep ? '  [env says ' + ep.env_success + ']' : '');
  div.appendChild(title);
  const frames = document.createElement('div'); frames.className = 'frames';
  for (const url of ep.frame_urls) { const img = document.createElement('img'); img.src = url; frames.appendChild(img); }
  if (!ep.frame_urls.length) frames.textContent = '(no frames recorded)';
  div.appendChild(frames);
  for (const [label, ok] of [['Success', true], ['Failure', false]]) {
    const b = document.createElement('button'); b.textContent = label; b.className = label.toLowerCase() + '-button';
    b.onclick = () => verdict(ep.index, ok); div.appendChild(b);
  }
  div.onclick = () => { selected = ep.index; paint(); };
  return div;
}
function paint() {
  for (const ep of episodes) {
    const div = document.getElementById('episode-' + ep.index);
    div.classList.toggle('selected', ep.index === selected);
    div.classList.toggle('success', ep.verdict === true);
    div.classList.toggle('failure', ep.verdict === false);
  }
  const left = episodes.filter(e => e.verdict === null).length;
  document.getElementById('status').textContent = open ?
    ('round ' + round + ': ' + left + ' of ' + episodes.length + ' episode(s) left to judge') :
    (round > 0 ? 'round ' + round + ' closed; waiting for the next one…' : 'waiting for episodes…');
}
async function verdict(index, ok) {
  const r = await fetch('/api/verdict', {method: 'POST', headers: {'Content-Type': 'application/json', 'X-Pushcut-Page': secret},
    body: JSON.stringify({round: round, index: index, success: ok})});
  if (r.ok) {
    const ep = episodes.find(e => e.index === index); ep.verdict = ok;
    const next = episodes.find(e => e.verdict === null); if (next) selected = next.index;
  }
  paint();
}
async function poll() {
  try {
    const state = await (await fetch('/api/round')).json();
    if (state.round !== round) {
      round = state.round; episodes = state.episodes; box.innerHTML = '';
      for (const ep of episodes) box.appendChild(card(ep));
      const first = episodes.find(e => e.verdict === null); selected = first ? first.index : 0;
    } else {
      for (const ep of state.episodes) { const mine = episodes.find(e => e.index === ep.index); if (mine) mine.verdict = ep.verdict; }
    }
    open = state.open; paint();
  } catch (e) { document.getElementById('status').textContent = 'trainer not reachable'; }
  setTimeout(poll, 300);
}
document.addEventListener('keydown', e => {
  if (!open || !episodes.length) return;
  const k = e.key.toLowerCase();
  if (k === 's' || k === 'y') verdict(selected, true);
  else if (k === 'f' || k === 'n') verdict(selected, false);
  else if (k === 'arrowdown' || k === 'arrowright') { selected = Math.min(selected + 1, episodes.length - 1); paint(); }
  else if (k === 'arrowup' || k === 'arrowleft') { selected = Math.max(selected - 1, 0); paint(); }
});
poll();
</script></body></html>
"""
