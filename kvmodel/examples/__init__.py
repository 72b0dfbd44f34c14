"""kvmodel's example applications, shipped inside the package so ``kvmodel demo`` runs them.

- :mod:`kvmodel.examples.orders`: an online shop's orders, with a fulfillment
  queue, a watch of status changes, optimistic retries and paginated listings;
  ``kvmodel demo`` runs its ``main``.
- :mod:`kvmodel.examples.web`: the same orders over HTTP with Starlette and a
  Server-Sent Events stream of an order's status (needs ``kvmodel[web]``).

They live here rather than in a top-level package so that installing kvmodel
adds nothing but ``kvmodel`` to ``site-packages``; the files a reader opens in
the repository are the ones the installed commands run.
"""
