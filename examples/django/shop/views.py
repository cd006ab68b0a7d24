from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from shop.models import Order
from shop.tasks import confirm_order


@csrf_exempt
@require_POST
def place_order(request: HttpRequest) -> JsonResponse:
    """Create an order; its confirmation task is published only if the request's transaction commits."""
    order = Order.objects.create(item=request.POST.get("item", "book"))
    confirm_order.delay_on_commit(order.pk)
    if request.POST.get("fail"):
        raise RuntimeError("payment failed")  # the transaction rolls back: no order, no task
    return JsonResponse({"order": order.pk})
