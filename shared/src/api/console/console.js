// chainkeeper console: the copy button (`<button type="button" data-copy="ID">` copies the text of #ID).
document.addEventListener("click", function (event) {
  var button = event.target.closest ? event.target.closest("button[data-copy]") : null;
  if (!button) return;
  var source = document.getElementById(button.getAttribute("data-copy"));
  if (!source || !navigator.clipboard) return;
  navigator.clipboard.writeText(source.textContent.trim()).then(function () {
    button.textContent = "Copied";
  });
});

// A hand-over page (to a provider's or identity provider's sign-in): follow its link at once. Script, not a
// redirect after the form, because the CSP's form-action 'self' also covers a form's redirects in Chromium.
document.addEventListener("DOMContentLoaded", function () {
  var next = document.querySelector("a[data-autofollow]");
  if (next) window.location.assign(next.href);
});
