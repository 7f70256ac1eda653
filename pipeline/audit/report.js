// The audit report's script, inlined into report.html: it fetches nothing (the page's CSP allows no request).
// Tables: sort (click a header), search, filter by category. Galleries: page through more samples, filter.
// Drill down: outcome counts by domain, language or score range, from the JSON in #audit-data.
(function () {
  'use strict';

  function text(node) { return (node.textContent || '').trim(); }
  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === 'text') { node.textContent = attrs[k]; } else { node.setAttribute(k, attrs[k]); }
    });
    (children || []).forEach(function (c) { node.appendChild(c); });
    return node;
  }
  function fmt(n) { return Number(n).toLocaleString('en-US'); }
  function cellValue(row, index) {
    var cell = row.cells[index];
    if (!cell) { return ''; }
    return cell.hasAttribute('data-v') ? cell.getAttribute('data-v') : text(cell);
  }

  // --- Tables -----------------------------------------------------------------------------------
  function enhanceTable(table) {
    if (table.getAttribute('data-enhanced')) { return; }
    table.setAttribute('data-enhanced', '1');
    var body = table.tBodies[0];
    if (!body) { return; }
    var headers = Array.prototype.slice.call(table.tHead.rows[0].cells);
    var groups = [];
    Array.prototype.slice.call(body.rows).forEach(function (row) {
      if (row.classList.contains('child') && groups.length) { groups[groups.length - 1].children.push(row); }
      else { groups.push({parent: row, children: []}); }
    });
    var bar = el('div', {'class': 'toolbar'});
    var search = el('input', {type: 'search', 'class': 't-search', placeholder: 'search rows'});
    bar.appendChild(search);
    var selects = [];
    headers.forEach(function (th, index) {
      if (th.getAttribute('data-kind') !== 'cat') { return; }
      var values = {};
      groups.forEach(function (g) { values[cellValue(g.parent, index)] = true; });
      var select = el('select', {'class': 't-filter', 'data-column': String(index)},
        [el('option', {value: '', text: 'every ' + text(th)})]);
      Object.keys(values).sort().forEach(function (v) { select.appendChild(el('option', {value: v, text: v || '(none)'})); });
      selects.push(select);
      bar.appendChild(select);
    });
    var count = el('span', {'class': 'count'});
    bar.appendChild(count);
    table.parentNode.insertBefore(bar, table);

    function matches(row, query) { return !query || text(row).toLowerCase().indexOf(query) >= 0; }
    function apply() {
      var query = search.value.trim().toLowerCase();
      var shown = 0;
      groups.forEach(function (g) {
        var ok = selects.every(function (s) { return !s.value || cellValue(g.parent, +s.getAttribute('data-column')) === s.value; });
        var parentHit = matches(g.parent, query);
        var childHits = g.children.map(function (c) { return matches(c, query); });
        var visible = ok && (parentHit || childHits.some(Boolean));
        g.parent.style.display = visible ? '' : 'none';
        g.children.forEach(function (c, i) { c.style.display = visible && (parentHit || childHits[i]) ? '' : 'none'; });
        if (visible) { shown += 1; }
      });
      count.textContent = shown + ' of ' + groups.length + ' rows';
      table.setAttribute('data-rows-shown', String(shown));
    }
    search.addEventListener('input', apply);
    selects.forEach(function (s) { s.addEventListener('change', apply); });

    headers.forEach(function (th, index) {
      th.addEventListener('click', function () {
        var descending = th.getAttribute('data-sort') !== 'desc' && (th.getAttribute('data-sort') === 'asc' ||
          th.getAttribute('data-kind') === 'num');
        headers.forEach(function (h) { h.removeAttribute('data-sort'); });
        th.setAttribute('data-sort', descending ? 'desc' : 'asc');
        var numeric = th.getAttribute('data-kind') === 'num';
        function compare(a, b) {
          var x = cellValue(a, index), y = cellValue(b, index);
          var r = numeric ? (parseFloat(x) || 0) - (parseFloat(y) || 0) : x.localeCompare(y);
          return descending ? -r : r;
        }
        groups.sort(function (a, b) { return compare(a.parent, b.parent); });
        groups.forEach(function (g) {
          g.children.sort(compare);
          body.appendChild(g.parent);
          g.children.forEach(function (c) { body.appendChild(c); });
        });
      });
    });
    apply();
  }

  // --- Galleries --------------------------------------------------------------------------------
  function enhanceGallery(section) {
    var blocks = Array.prototype.slice.call(section.querySelectorAll('.reason'));
    var controls = section.querySelector('.gallery-filter');
    function q(cls) { return controls ? controls.querySelector(cls) : null; }
    var inputs = {search: q('.g-search'), reason: q('.g-reason'), lang: q('.g-lang'), domain: q('.g-domain'),
                  min: q('.g-clip-min'), max: q('.g-clip-max')};
    blocks.forEach(function (block) {
      var button = block.querySelector('.more-button');
      block.setAttribute('data-page', button ? button.getAttribute('data-step') : '1000000');
      if (button) {
        button.addEventListener('click', function () {
          block.setAttribute('data-page', String(+block.getAttribute('data-page') + (+button.getAttribute('data-step'))));
          apply();
        });
      }
    });
    function value(input) { return input ? input.value.trim() : ''; }
    function apply() {
      var search = value(inputs.search).toLowerCase(), reason = value(inputs.reason), lang = value(inputs.lang);
      var domain = value(inputs.domain).toLowerCase(), min = value(inputs.min), max = value(inputs.max);
      var filtering = !!(search || reason || lang || domain || min || max);
      var total = 0, shownAll = 0;
      blocks.forEach(function (block) {
        var cards = Array.prototype.slice.call(block.querySelectorAll('figure.thumb'));
        var page = +block.getAttribute('data-page');
        var shown = 0;
        cards.forEach(function (card, index) {
          var clip = card.getAttribute('data-clip');
          var ok = (!reason || block.getAttribute('data-reason') === reason) &&
            (!search || card.getAttribute('data-text').indexOf(search) >= 0) &&
            (!lang || card.getAttribute('data-lang') === lang) &&
            (!domain || card.getAttribute('data-domain').toLowerCase().indexOf(domain) >= 0) &&
            (!min || (clip !== '' && +clip >= +min)) && (!max || (clip !== '' && +clip < +max));
          card.classList.toggle('filtered', !ok);
          card.classList.toggle('more', !filtering && index >= page);
          if (ok && (filtering || index < page)) { shown += 1; }
        });
        total += cards.length;
        shownAll += shown;
        block.classList.toggle('filtered', filtering && shown === 0);
        var label = block.querySelector('.shown-count');
        if (label) { label.textContent = shown + ' of ' + cards.length + ' sampled shown'; }
        var button = block.querySelector('.more-button');
        if (button) { button.style.display = !filtering && page < cards.length ? '' : 'none'; }
      });
      var count = controls ? controls.querySelector('.g-count') : null;
      if (count) { count.textContent = shownAll + ' of ' + total + ' sampled pairs shown'; }
      section.setAttribute('data-cards-shown', String(shownAll));
    }
    Object.keys(inputs).forEach(function (k) {
      if (inputs[k]) { inputs[k].addEventListener('input', apply); inputs[k].addEventListener('change', apply); }
    });
    var clear = q('.g-clear');
    if (clear) {
      clear.addEventListener('click', function () {
        Object.keys(inputs).forEach(function (k) { if (inputs[k]) { inputs[k].value = ''; } });
        apply();
      });
    }
    section.auditFilter = function (values) {
      Object.keys(inputs).forEach(function (k) { if (inputs[k]) { inputs[k].value = values[k] || ''; } });
      apply();
    };
    apply();
  }

  // --- Drill down -------------------------------------------------------------------------------
  function enhanceExplore(data) {
    var dim = document.getElementById('explore-dim');
    if (!dim || !data) { return; }
    var holder = document.getElementById('explore-value');
    var result = document.getElementById('explore-result');
    var current = {};

    function breakdown(labels, title) {
      var total = 0;
      Object.keys(labels).forEach(function (k) { total += labels[k]; });
      var rows = Object.keys(labels).sort(function (a, b) { return labels[b] - labels[a]; });
      var table = el('table', {'class': 'data', id: 'explore-table'});
      table.appendChild(el('thead', {}, [el('tr', {}, [
        el('th', {'data-kind': 'text', text: 'outcome'}), el('th', {'data-kind': 'cat', text: 'stage'}),
        el('th', {'data-kind': 'num', text: 'pairs'}), el('th', {'data-kind': 'num', text: 'share of the slice'})])]));
      var body = el('tbody');
      rows.forEach(function (label) {
        var n = labels[label];
        var cells = [el('td', {text: label}), el('td', {text: data.stages[label] || 'other rules'}),
          el('td', {'data-v': String(n), text: fmt(n)}),
          el('td', {'data-v': String(n), text: (100 * n / (total || 1)).toFixed(1) + ' %'})];
        body.appendChild(el('tr', {}, cells));
      });
      table.appendChild(body);
      var kept = labels.kept || 0;
      result.innerHTML = '';
      result.appendChild(el('p', {id: 'explore-summary', 'data-total': String(total), 'data-kept': String(kept),
        text: title + ': ' + fmt(total) + ' pairs, ' + fmt(kept) + ' kept (' + (100 * kept / (total || 1)).toFixed(1) + ' %)'}));
      var wrap = el('div');
      wrap.appendChild(table);
      result.appendChild(wrap);
      enhanceTable(table);
    }

    function choose(items, key) {
      var select = el('select', {id: 'explore-choice'});
      items.forEach(function (item, i) {
        select.appendChild(el('option', {value: String(i), text: item[key] + ' (' + fmt(item.total) + ')'}));
      });
      function show() {
        var item = items[+select.value];
        current = {};
        current[key === 'domain' ? 'domain' : 'lang'] = item[key];
        breakdown(item.labels, key + ' ' + item[key]);
      }
      select.addEventListener('change', show);
      holder.appendChild(select);
      show();
    }

    function range(score, name) {
      var edges = score.edges;
      var from = el('input', {type: 'number', id: 'explore-from', step: 'any', value: String(edges[0])});
      var to = el('input', {type: 'number', id: 'explore-to', step: 'any', value: String(edges[edges.length - 1])});
      holder.appendChild(el('label', {}, [document.createTextNode(' from '), from]));
      holder.appendChild(el('label', {}, [document.createTextNode(' to '), to]));
      function show() {
        var lo = parseFloat(from.value), hi = parseFloat(to.value);
        if (isNaN(lo)) { lo = -Infinity; }
        if (isNaN(hi)) { hi = Infinity; }
        var labels = {}, snappedLo = null, snappedHi = null;
        Object.keys(score.by_label).forEach(function (label) {
          var part = score.by_label[label], n = 0;
          // Bins are [edge_i, edge_i+1); the underflow bin is (-inf, edge_0), the overflow bin [edge_last, inf).
          if (lo < edges[0]) { n += part.underflow; snappedLo = -Infinity; }
          part.counts.forEach(function (c, i) {
            if (edges[i + 1] > lo && edges[i] < hi) {
              n += c;
              snappedLo = snappedLo === null ? edges[i] : Math.min(snappedLo, edges[i]);
              snappedHi = snappedHi === null ? edges[i + 1] : Math.max(snappedHi, edges[i + 1]);
            }
          });
          if (hi > edges[edges.length - 1]) { n += part.overflow; snappedHi = Infinity; }
          if (n) { labels[label] = n; }
        });
        current = name === 'clip_score' ? {min: isFinite(lo) ? String(lo) : '', max: isFinite(hi) ? String(hi) : ''} : {};
        breakdown(labels, score.title + ' in [' + snappedLo + ', ' + snappedHi + ')');
      }
      from.addEventListener('change', show);
      to.addEventListener('change', show);
      show();
    }

    function render() {
      holder.innerHTML = '';
      var d = dim.value;
      if (d === 'domain') { choose(data.domains, 'domain'); }
      else if (d === 'language') { choose(data.languages, 'language'); }
      else if (data.scores[d]) { range(data.scores[d], d); }
    }
    dim.addEventListener('change', render);
    render();
    var button = document.getElementById('explore-gallery');
    if (button) {
      button.addEventListener('click', function () {
        var gallery = document.getElementById('gallery');
        if (gallery && gallery.auditFilter) {
          gallery.auditFilter(current);
          gallery.scrollIntoView();
        }
      });
    }
  }

  function init() {
    var dataNode = document.getElementById('audit-data');
    var data = dataNode ? JSON.parse(dataNode.textContent) : {};
    Array.prototype.slice.call(document.querySelectorAll('table.data')).forEach(enhanceTable);
    Array.prototype.slice.call(document.querySelectorAll('section.gallery')).forEach(enhanceGallery);
    enhanceExplore(data.explore);
    document.body.setAttribute('data-ready', 'true');
  }

  // Marks the body once every image has decoded: the rendering test reads these attributes.
  window.addEventListener('load', function () {
    var images = Array.prototype.slice.call(document.images);
    var ok = images.filter(function (i) { return i.complete && i.naturalWidth > 0 && i.src.indexOf('data:') === 0; });
    document.body.setAttribute('data-images-total', String(images.length));
    document.body.setAttribute('data-images-ok', String(ok.length));
    document.body.setAttribute('data-images-loaded', ok.length === images.length ? 'true' : 'false');
  });
  if (document.readyState === 'loading') { document.addEventListener('DOMContentLoaded', init); } else { init(); }
}());
