// Regenerates the renderer pages of this regression set from formulas.json with the real renderers:
//   npm install mathjax-full@3.2.2 katex@0.16 temml@0.10 && NODE_PATH=node_modules node generate.js
// MathJax 3 CHTML and SVG are written WITHOUT assistive MathML (the case where only the glyph tree is left);
// "mathml" is MathJax's own TeX->MathML with no TeX annotation (hand-authored MathML pages look like this).
const fs = require('fs');
const path = require('path');
const {mathjax} = require('mathjax-full/js/mathjax.js');
const {TeX} = require('mathjax-full/js/input/tex.js');
const {CHTML} = require('mathjax-full/js/output/chtml.js');
const {SVG} = require('mathjax-full/js/output/svg.js');
const {liteAdaptor} = require('mathjax-full/js/adaptors/liteAdaptor.js');
const {RegisterHTMLHandler} = require('mathjax-full/js/handlers/html.js');
const {AllPackages} = require('mathjax-full/js/input/tex/AllPackages.js');
const {SerializedMmlVisitor} = require('mathjax-full/js/core/MmlTree/SerializedMmlVisitor.js');
const {STATE} = require('mathjax-full/js/core/MathItem.js');
const katex = require('katex');
const temml = require('temml');

const adaptor = liteAdaptor();
RegisterHTMLHandler(adaptor);
const doc = (out) => mathjax.document('', {InputJax: new TeX({packages: AllPackages, tags: 'ams'}), OutputJax: out});
const chtml = doc(new CHTML({fontURL: 'https://cdn.jsdelivr.net/npm/mathjax@3/es5/output/chtml/fonts/woff-v2'}));
const svg = doc(new SVG({fontCache: 'global'}));
const mml = doc(new SVG({fontCache: 'global'}));

const render = {
  'mathjax3-chtml': (t, d) => adaptor.outerHTML(chtml.convert(t, {display: d})),
  'mathjax3-svg': (t, d) => adaptor.outerHTML(svg.convert(t, {display: d})),
  'mathml': (t, d) => new SerializedMmlVisitor().visitTree(mml.convert(t, {display: d, end: STATE.CONVERT}))
    .replace(/\n\s*/g, ''),
  'temml': (t, d) => temml.renderToString(t, {displayMode: d, annotate: false}),
  'katex': (t, d) => (d ? '<span class="katex-display">' : '') +
    katex.renderToString(t, {displayMode: d, output: 'htmlAndMathml', throwOnError: true}) + (d ? '</span>' : ''),
  'mathjax2': (t, d) => `<span class="MathJax_Preview">${t.replace(/[\\{}]/g, '')}</span>` +
    `<script type="math/tex${d ? '; mode=display' : ''}">${t}</script>`,
};
const here = __dirname;
const sets = JSON.parse(fs.readFileSync(path.join(here, 'formulas.json'), 'utf8'));
const words = ['Consider', 'Recall that', 'We note', 'It follows that', 'By definition', 'Observe'];
for (const [split, formulas] of Object.entries(sets)) {
  for (const [kind, fn] of Object.entries(render)) {
    const body = formulas.map(([tex, display], i) => {
      const m = fn(tex, display);
      return display ? `<p>${words[i % words.length]} the following.</p>\n<div class="equation">${m}</div>`
        : `<p>${words[i % words.length]} ${m} in step ${i + 1}.</p>`;
    }).join('\n');
    const html = `<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>${kind} ${split}</title></head>\n` +
      `<body><article><h1>Notes (${kind})</h1>\n${body}\n</article></body></html>\n`;
    fs.writeFileSync(path.join(here, `${split}__${kind}.html`), html);
  }
}
