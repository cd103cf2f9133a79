// peftbench report.html: filters, sortable tables, linkable view. Plain JS, no network.
// Inlined by analysis/interactive.py after the page was scrubbed; keep it self-contained.
(function () {
  "use strict";
  var FACETS = ["task", "model", "method"];
  var index = JSON.parse(document.getElementById("explore-index").textContent);
  var sortState = { column: null, dir: "asc" };

  function boxes(facet) {
    return Array.prototype.slice.call(
      document.querySelectorAll('#filters input[data-facet="' + facet + '"]'));
  }

  function selected() {
    var out = {};
    FACETS.forEach(function (facet) {
      out[facet] = new Set(boxes(facet).filter(function (b) { return b.checked; })
        .map(function (b) { return b.value; }));
    });
    return out;
  }

  function tables() {
    return Array.prototype.slice.call(document.querySelectorAll("table.comparison"));
  }

  function headerTexts(table) {
    return Array.prototype.map.call(table.tHead.rows[0].cells,
      function (th) { return th.textContent.trim(); });
  }

  function filterTables(sel) {
    tables().forEach(function (table) {
      var model = table.getAttribute("data-model");
      var figure = table.closest("figure") || table;
      figure.hidden = !sel.model.has(model);
      var labels = index.rows[model] || {};
      Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
        var method = labels[row.cells[0].textContent.trim()];
        row.hidden = method !== undefined && !sel.method.has(method);
      });
      // Task columns: hidden when the task is filtered out (header text = task name).
      var allTasks = boxes("task").map(function (b) { return b.value; });
      headerTexts(table).forEach(function (text, i) {
        if (allTasks.indexOf(text) < 0) return;
        var hide = !sel.task.has(text);
        Array.prototype.forEach.call(table.rows, function (row) {
          if (row.cells[i]) row.cells[i].hidden = hide;
        });
      });
    });
  }

  // Reproducibility rows: one per run, its run id in the first cell.
  function filterRuns(sel) {
    document.querySelectorAll("#reproducibility tbody tr").forEach(function (row) {
      var run = index.runs[row.cells[0].textContent.trim()];
      row.hidden = run !== undefined &&
        !(sel.task.has(run.task) && sel.model.has(run.model) && sel.method.has(run.method));
    });
  }

  // The Pareto frontier of the points shown, as analysis.stats.pareto_front draws it: a
  // point is on it when it beats every point that costs less (cheapest first, at equal
  // cost the best first). Returns the step line and, per point, whether it is hollow: off
  // the frontier, but its interval's better end reaches the frontier's level at its cost.
  function frontier(points, higherIsBetter) {
    var sign = higherIsBetter ? 1 : -1;
    var order = points.map(function (_, i) { return i; });
    order.sort(function (a, b) {
      return points[a].x - points[b].x || sign * (points[b].y - points[a].y);
    });
    var best = -Infinity, onFront = points.map(function () { return false; });
    order.forEach(function (i) {
      if (sign * points[i].y > best) { onFront[i] = true; best = sign * points[i].y; }
    });
    var front = order.filter(function (i) { return onFront[i]; });
    var fx = front.map(function (i) { return points[i].x; });
    var fy = front.map(function (i) { return points[i].y; });
    if (front.length) {
      fx.push(Math.max.apply(null, points.map(function (p) { return p.x; })));
      fy.push(fy[fy.length - 1]);
    }
    var hollow = points.map(function (p, i) {
      if (onFront[i] || p.better === null) return false;
      var level = -Infinity;
      front.forEach(function (j) {
        if (points[j].x <= p.x) level = Math.max(level, sign * points[j].y);
      });
      return sign * p.better >= level;
    });
    return { x: fx, y: fy, hollow: hollow };
  }

  function filterCharts(sel) {
    if (typeof Plotly === "undefined") return;
    document.querySelectorAll("#explore .js-plotly-plot").forEach(function (gd) {
      var visible = [], panels = {};
      gd.data.forEach(function (trace, i) {
        var m = trace.meta || {};
        var on = sel.task.has(m.task) && sel.model.has(m.model) &&
          (m.kind !== "point" || sel.method.has(m.method));
        visible.push(on);
        var key = m.model + "\u0000" + m.task;
        panels[key] = panels[key] || { points: [], frontier: null, hib: true };
        if (m.kind === "frontier") {
          panels[key].frontier = i;
          panels[key].hib = m.hib;  // the direction of the panel's task
        }
        else if (m.kind === "point" && on) {
          panels[key].points.push({ i: i, x: trace.x[0], y: trace.y[0], better: m.better,
                                    color: m.color });
        }
      });
      var update = { visible: visible, x: [], y: [], "marker.color": [] };
      var indices = gd.data.map(function (_, i) { return i; });
      gd.data.forEach(function (trace) {
        update.x.push(trace.x); update.y.push(trace.y);
        update["marker.color"].push(trace.marker ? trace.marker.color : undefined);
      });
      Object.keys(panels).forEach(function (key) {
        var panel = panels[key];
        if (panel.frontier === null) return;
        var f = frontier(panel.points, panel.hib);
        update.x[panel.frontier] = f.x;
        update.y[panel.frontier] = f.y;
        if (!panel.points.length) update.visible[panel.frontier] = false;
        panel.points.forEach(function (p, k) {
          update["marker.color"][p.i] = f.hollow[k] ? "white" : p.color;
        });
      });
      // One legend entry per row label, on a filled marker of its group where one is shown
      // (a hollow one would show the label's colour as white).
      var legendTrace = Object.create(null);
      gd.data.forEach(function (trace, i) {
        if (!update.visible[i]) return;
        var group = trace.legendgroup || trace.name;
        var filled = update["marker.color"][i] !== "white";
        if (!(group in legendTrace) || (filled && !legendTrace[group].filled)) {
          legendTrace[group] = { i: i, filled: filled };
        }
      });
      update.showlegend = gd.data.map(function (trace, i) {
        var chosen = legendTrace[trace.legendgroup || trace.name];
        return chosen !== undefined && chosen.i === i;
      });
      Plotly.restyle(gd, update, indices);
    });
  }

  function writeHash(sel) {
    // Written by hand, not by URLSearchParams, so that lists keep readable commas.
    var parts = [];
    FACETS.forEach(function (facet) {
      if (sel[facet].size < boxes(facet).length) {
        parts.push(facet + "=" + Array.from(sel[facet]).sort().map(encodeURIComponent).join(","));
      }
    });
    if (sortState.column) {
      parts.push("sort=" + encodeURIComponent(sortState.column), "dir=" + sortState.dir);
    }
    var hash = parts.join("&");
    history.replaceState(null, "", hash ? "#" + hash : location.pathname + location.search);
  }

  function apply() {
    var sel = selected();
    filterTables(sel);
    filterCharts(sel);
    filterRuns(sel);
    var shown = 0, total = 0;
    tables().forEach(function (table) {
      Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
        total += 1;
        if (!row.hidden && !(table.closest("figure") || table).hidden) shown += 1;
      });
    });
    document.getElementById("filter-status").textContent =
      "Showing " + shown + " of " + total + " table rows.";
    writeHash(sel);
  }

  // Numeric-aware sort key: the first number in the cell ("82.0 ± 2.0", "1,500.0 MB");
  // cells without one ("–": not run) sort last in either direction.
  function sortKey(text) {
    var match = text.replace(/,/g, "").match(/-?\d+(?:\.\d+)?(?:e[-+]?\d+)?/i);
    return match ? { num: parseFloat(match[0]), text: text } : { num: null, text: text };
  }

  function compare(a, b, numeric) {
    if (numeric) {
      if (a.num === null || b.num === null) return (a.num === null) - (b.num === null);
      return a.num - b.num;
    }
    return a.text.localeCompare(b.text);
  }

  function sortTable(table, column, dir) {
    var i = headerTexts(table).indexOf(column);
    if (i < 0) return false;
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var keys = rows.map(function (r) { return sortKey(r.cells[i].textContent.trim()); });
    var numeric = i > 0 && keys.some(function (k) { return k.num !== null; });
    var order = rows.map(function (_, j) { return j; });
    order.sort(function (a, b) {
      var ka = keys[a], kb = keys[b];
      var missing = numeric && (ka.num === null || kb.num === null);
      var c = compare(ka, kb, numeric);
      if (!missing && dir === "desc") c = -c;
      return c || a - b;
    });
    order.forEach(function (j) { body.appendChild(rows[j]); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, j) {
      if (j === i) th.setAttribute("aria-sort", dir === "desc" ? "descending" : "ascending");
      else th.removeAttribute("aria-sort");
    });
    return true;
  }

  function sortAll(column, dir) {
    sortState = { column: column, dir: dir };
    tables().forEach(function (table) { sortTable(table, column, dir); });
  }

  function readHash() {
    var params = new URLSearchParams(location.hash.replace(/^#/, ""));
    FACETS.forEach(function (facet) {
      if (!params.has(facet)) return;
      var wanted = new Set(params.get(facet).split(",").filter(Boolean));
      boxes(facet).forEach(function (b) { b.checked = wanted.has(b.value); });
    });
    if (params.has("sort")) {
      sortAll(params.get("sort"), params.get("dir") === "desc" ? "desc" : "asc");
    }
  }

  function init() {
    tables().forEach(function (table) {
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
        th.classList.add("sortable");
        th.title = "Click to sort";
        th.addEventListener("click", function () {
          var column = th.textContent.trim();
          var dir = sortState.column === column && sortState.dir === "asc" ? "desc" : "asc";
          sortAll(column, dir);
          writeHash(selected());
        });
      });
    });
    document.querySelectorAll("#filters input").forEach(function (b) {
      b.addEventListener("change", apply);
    });
    window.addEventListener("hashchange", function () { readHash(); apply(); });
    readHash();
    apply();
    document.body.setAttribute("data-explore-ready", "1");
    document.dispatchEvent(new Event("explore-ready"));
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
