// Draws the console's charts. The numbers come from <script type="application/json"
// data-chart="ID"> blocks the server wrote (the CSP allows no inline script); the same
// numbers are in the tables beside each chart, which this closes once a chart is drawn.
(function () {
  "use strict";
  var COLORS = ["#1f5fbf", "#d9480f", "#2b8a3e", "#862e9c", "#c2255c", "#0b7285", "#5c940d", "#e67700"];

  function draw(node) {
    var target = document.getElementById(node.getAttribute("data-chart"));
    if (!target || typeof uPlot === "undefined") {
      return;
    }
    var spec = JSON.parse(node.textContent);
    if (!spec.x.length || !spec.series.length) {
      target.style.display = "none"; // nothing to draw: the table says so
      return;
    }
    var single = spec.x.length === 1;
    var series = [{}];
    spec.series.forEach(function (s, i) {
      series.push({
        label: s.label,
        stroke: COLORS[(s.color === undefined ? i : s.color) % COLORS.length],
        width: 2,
        spanGaps: true,
        points: { show: single || spec.days === true, size: 8 },
      });
    });
    var width = Math.max(320, Math.floor(target.getBoundingClientRect().width) - 2);
    var x = { time: true };
    if (spec.days) {
      // Whole days: half a day of margin either side, so one day's points sit in the middle.
      x.auto = false;
      x.range = [spec.x[0] - 43200, spec.x[spec.x.length - 1] + 43200];
    }
    var opts = {
      width: width,
      height: 240,
      series: series,
      scales: { x: x },
      axes: [{}, { label: spec.unit, size: 70 }],
      legend: { live: true },
    };
    new uPlot(opts, [spec.x].concat(spec.series.map(function (s) { return s.values; })), target);
    var details = nextDetails(node);
    if (details) {
      details.open = false;
    }
  }

  function nextDetails(node) {
    for (var el = node.nextElementSibling; el; el = el.nextElementSibling) {
      if (el.tagName === "DETAILS") {
        return el;
      }
    }
    return null;
  }

  document.documentElement.classList.add("js");
  document.querySelectorAll("script[type='application/json'][data-chart]").forEach(draw);
})();
