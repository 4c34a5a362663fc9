/*! Leadstream snippet: <script src="https://HOST/track.js" data-key="KEY" async></script>
 * README "The snippet" documents it. Plain ES2015, no dependencies, no eval: safe under a
 * strict CSP (script-src and connect-src must allow HOST). */
(function (w, d, n) {
  var s = d.currentScript || d.querySelector('script[data-key][src*="/track.js"]');
  var api = (w.leadstream = w.leadstream || {});
  if (!s || api.loaded) return; // included twice: the first copy serves
  api.loaded = 1;
  var url = new URL(s.src).origin + '/beacon?k=' + encodeURIComponent(s.getAttribute('data-key') || '');
  var C = 'ls_vid';
  // null: waiting for consent (events are held in memory), true: given, false: refused
  var ok = s.getAttribute('data-consent') == 'pending' ? null : true;
  var held = [];
  var vid, shown = 0, since = 0;

  function local(f) {
    try { return f(w.localStorage); } catch (e) {} // storage disabled or full
  }
  function cookie() {
    var m = d.cookie.match(/(?:^|; )ls_vid=([\w-]{1,128})/);
    return m && m[1];
  }
  function setCookie(v, age) {
    d.cookie = C + '=' + v + '; Max-Age=' + age + '; Path=/; SameSite=Lax' +
      (location.protocol == 'https:' ? '; Secure' : '');
  }
  function visitor() {
    if (!vid) {
      vid = cookie() || local(function (l) { return l.getItem(C); });
      if (!vid) {
        var b = crypto.getRandomValues(new Uint8Array(16));
        b[6] = (b[6] & 15) | 64; // a random (version 4) UUID
        b[8] = (b[8] & 63) | 128;
        vid = [].map.call(b, function (x) { return (x + 256).toString(16).slice(1); }).join('')
          .replace(/^(.{8})(.{4})(.{4})(.{4})/, '$1-$2-$3-$4-');
      }
      setCookie(vid, 31536000); // renewed on each page: a year after the last visit
      if (cookie() != vid) local(function (l) { l.setItem(C, vid); }); // cookies blocked
    }
    return vid;
  }
  function post(ev) {
    if (!ok) { if (ok === null) held.push(ev); return; }
    ev.visitorId = visitor();
    ev.sentAt = new Date().toISOString();
    var body = JSON.stringify(ev); // a string is sent as text/plain: no CORS preflight
    if (!(n.sendBeacon && n.sendBeacon(url, body))) {
      fetch(url, { method: 'POST', body: body, keepalive: true, credentials: 'omit' })
        .catch(function () {});
    }
  }
  function event(type, fields) {
    var ev = { type: type, pageUrl: location.href.slice(0, 2048), occurredAt: new Date().toISOString() };
    if (d.title) ev.pageTitle = d.title.slice(0, 1024);
    for (var k in fields) if (fields[k] != null) ev[k] = fields[k];
    post(ev);
  }
  // pageDuration: seconds the page was visible since the last report, sent when it is hidden.
  function leave() {
    if (since) shown += Date.now() - since;
    since = 0;
    var secs = Math.round(shown / 1000);
    shown = 0;
    if (secs > 0) event('page_leave', { pageDuration: secs });
  }
  function onVisibility() {
    if (d.visibilityState == 'hidden') leave();
    else if (!since) since = Date.now();
  }

  api.track = function (type, fields) { event(type, fields); };
  api.identify = function (p) {
    p = p || {};
    var person = { firstName: p.firstName, lastName: p.lastName };
    if (p.email) person.emails = [p.email];
    if (p.phone) person.phones = [p.phone];
    event('identify', { person: person });
  };
  api.consent = function (yes) {
    ok = !!yes;
    if (ok) {
      var q = held;
      held = [];
      q.forEach(post);
    } else {
      held = [];
      vid = null;
      setCookie('', 0);
      local(function (l) { l.removeItem(C); });
    }
  };

  onVisibility();
  d.addEventListener('visibilitychange', onVisibility);
  w.addEventListener('pagehide', leave);
  event('page_view', d.referrer ? { pageReferrer: d.referrer.slice(0, 2048) } : {});
  // Calls queued before the script loaded, then every later push runs at once.
  var q = api.q || [];
  api.q = { push: function (c) { var f = api[c[0]]; if (f) f.apply(api, [].slice.call(c, 1)); } };
  [].forEach.call(q, api.q.push);
})(window, document, navigator);
