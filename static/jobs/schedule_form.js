// The admin's schedule form: the chosen crontab in words under its field (django-celery-beat's
// behaviour, from a file instead of its inline script).
(function () {
  "use strict";

  var data = document.getElementById("readable-crontabs");
  var field = document.querySelector(".field-crontab");
  if (!data || !field) return;
  var readable = JSON.parse(data.textContent);
  var help = field.querySelector(".help");
  var original = help ? help.textContent.trim() : "";

  document.querySelectorAll(".field-crontab_translation").forEach(function (row) { row.style.display = "none"; });

  field.addEventListener("change", function () {
    var select = document.getElementById("id_crontab");
    var words = select ? readable[select.value] : undefined;
    if (!help) return;
    help.replaceChildren(document.createTextNode(original));
    if (words !== undefined) {
      help.appendChild(document.createElement("br"));
      help.appendChild(document.createTextNode("Translation: " + words));
    }
  });
})();
