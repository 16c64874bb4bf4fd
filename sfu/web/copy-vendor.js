// npm postinstall: copy the livekit-client browser bundle next to the built-in page.
// sfu/web/vendor/ is git-ignored; the page shows "run .ci/setup" when the file is missing.
'use strict';
const fs = require('fs');
const path = require('path');

const root = path.resolve(__dirname, '..', '..');
const dist = path.join(root, 'node_modules', 'livekit-client', 'dist');
const dest = path.join(root, 'sfu', 'web', 'vendor');
const files = ['livekit-client.umd.js', 'livekit-client.umd.js.map'];

fs.mkdirSync(dest, { recursive: true });
for (const name of files) {
  const src = path.join(dist, name);
  if (!fs.existsSync(src)) {
    if (name.endsWith('.map')) continue; // the source map is optional
    console.error(`copy-vendor: ${src} not found (is livekit-client installed?)`);
    process.exit(1);
  }
  fs.copyFileSync(src, path.join(dest, name));
}
const version = require(path.join(root, 'node_modules', 'livekit-client', 'package.json')).version;
console.log(`copy-vendor: livekit-client ${version} -> sfu/web/vendor/`);
